"""Captions in several languages: the generator's German and French grammar, the language mix of the
training captions, one tokenizer for every language, and the per-language evaluators."""
import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from vlmjax import train as train_lib
from vlmjax.data import pipeline, shapes, shapes_languages as lang, sources


def _objects(*specs):
  return [dict(color=c, shape=s, size=z, x=x, y=y) for c, s, z, x, y in specs]


MESH = dict(data=1, fsdp=-1, tensor=1)  # all of the tests' 8 fake devices
ONE = dict(with_size=[True], with_position=True, with_count=False)


@pytest.mark.parametrize("obj, template, language, expected", [
    # German: the article and both adjectives agree with the noun's gender.
    (("red", "circle", "large", .1, .1), ONE, "de", "ein großer roter Kreis oben links."),
    (("blue", "square", "small", .5, .5), ONE, "de", "ein kleines blaues Quadrat in der Mitte."),
    (("orange", "diamond", "large", .9, .5), ONE, "de", "eine große orangefarbene Raute rechts."),
    # French: size before and colour after the noun, both agreeing with it.
    (("green", "star", "small", .5, .9), ONE, "fr", "une petite étoile verte en bas."),
    (("purple", "cross", "large", .1, .9), ONE, "fr", "une grande croix violette en bas à gauche."),
    (("purple", "triangle", "large", .5, .5), dict(ONE, with_position=False), "fr", "un grand triangle violet."),
])
def test_one_object_grammar(obj, template, language, expected):
  assert shapes.caption_in(_objects(obj), template, language) == expected


def test_several_objects_and_count():
  objects = _objects(("yellow", "cross", "small", .2, .2), ("green", "circle", "large", .8, .8),
                     ("red", "diamond", "small", .2, .8))
  template = dict(with_size=[False, True, False], with_position=False, with_count=True)
  assert shapes.caption_in(objects, template, "en") == "three objects: a yellow cross, a large green circle and a red diamond."
  assert shapes.caption_in(objects, template, "de") == \
      "drei Objekte: ein gelbes Kreuz, ein großer grüner Kreis und eine rote Raute."
  assert shapes.caption_in(objects, template, "fr") == \
      "trois objets : une croix jaune, un grand cercle vert et un losange rouge."


def test_records_translate_their_own_caption():
  """Each record's translations name exactly its objects: every class name of the scene, in the
  language, occurs in the translation, and the translation is as long in objects as the caption."""
  for index in range(40):
    example = shapes.make_example(0, "train", index, 32)
    assert set(example["translations"]) == set(lang.TRANSLATED)
    for language, text in example["translations"].items():
      for o in example["objects"]:
        noun = lang.NOUNS[language][o["shape"]][0]
        assert noun in text, (text, o)
      assert text.count(",") == example["caption"].count(",")


def test_prompts_per_language():
  assert shapes.prompts_in("en") is shapes.zero_shot_prompts
  assert shapes.prompts_in("de")("yellow star") == [
      "ein gelber Stern.", "ein kleiner gelber Stern.", "ein großer gelber Stern."]
  assert lang.class_name("green cross", "fr") == "croix verte"
  with pytest.raises(ValueError, match="no captions in language 'es'"):
    shapes.prompts_in("es")


def test_source_reads_translations(tiny_source):
  assert pipeline.source_languages(tiny_source) == ("en", "de", "fr")
  record = tiny_source[3]
  assert pipeline.caption_in(record, "en") == record["caption"]
  assert pipeline.caption_in(record, "fr") == shapes.make_example(0, "train", 3, 32)["translations"]["fr"]
  with pytest.raises(pipeline.LanguageError, match=r"input.languages: a record has no caption in 'es' \(it has: en, de, fr\)"):
    pipeline.caption_in(record, "es")


def test_language_mix_draws_each_language_at_its_weight(tiny_source, tiny_tokenizer):
  config = tiny_config("unused", **{"input.languages": dict(en=2.0, de=1.0, fr=1.0, ja=0.0)})
  mix = pipeline.language_mix(config.input)
  assert dict(mix) == dict(en=0.5, de=0.25, fr=0.25)  # a zero weight drops the language
  preprocess = pipeline.Preprocess(tiny_tokenizer, 32, 32, train=True, languages=mix)
  record = tiny_source[0]
  texts = {lang_: tiny_tokenizer.encode([pipeline.caption_in(record, lang_)], 32)[0].tobytes()
           for lang_ in ("en", "de", "fr")}
  drawn = [preprocess.random_map(record, np.random.default_rng(i))["text"].tobytes() for i in range(400)]
  shares = {k: sum(d == t for d in drawn) / len(drawn) for k, t in texts.items()}
  assert sum(shares.values()) == 1.0
  assert abs(shares["en"] - 0.5) < 0.08 and abs(shares["de"] - 0.25) < 0.07 and abs(shares["fr"] - 0.25) < 0.07


def test_bad_language_config(tiny_data_dir, tmp_path):
  from vlmjax.config import ConfigError
  from vlmjax import experiment
  with pytest.raises(ConfigError, match=r"'input.languages.de' -1.0 must be a number >= 0"):
    experiment.check(tiny_config(tiny_data_dir, mesh=MESH, **{"input.languages": dict(en=1.0, de=-1.0)}))
  with pytest.raises(ConfigError, match="'input.languages' needs one weight > 0"):
    experiment.check(tiny_config(tiny_data_dir, mesh=MESH, **{"input.languages": dict(en=0.0)}))
  config = tiny_config(tiny_data_dir, mesh=MESH, **{"input.languages": dict(en=1.0, es=1.0)})
  with pytest.raises(pipeline.LanguageError, match=r"^input.languages: the data has no captions in 'es' "
                     r"\(it has: en, de, fr\)$"):
    train_lib.train(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "config.json")  # refused before the run is written
  config = tiny_config(tiny_data_dir, mesh=MESH, evals=dict(z=dict(type="zeroshot", split="test", language="es")))
  with pytest.raises(ValueError, match=r"^evals.z.language 'es': vlmjax_shapes has no captions in language 'es'"):
    train_lib.train(config, str(tmp_path / "run2"))
  config = tiny_config(tiny_data_dir, mesh=MESH, evals=dict(r=dict(type="retrieval", split="test", language="xx")))
  with pytest.raises(pipeline.LanguageError, match=r"^evals.r.language: the data has no captions in 'xx'"):
    train_lib.train(config, str(tmp_path / "run3"))


def test_multilingual_run(tiny_data_dir, tmp_path):
  """A run on a language mix trains one tokenizer on every language and reports each language's
  zero-shot and retrieval; the English numbers equal those of the plain English evaluators."""
  from vlmjax.data.tokenizer import Tokenizer
  evals = dict(zeroshot=dict(type="zeroshot", split="test"),
               retrieval=dict(type="retrieval", split="test", num_examples=64))
  for language in ("en", "de", "fr"):
    evals[f"zeroshot_{language}"] = dict(type="zeroshot", split="test", language=language)
    evals[f"retrieval_{language}"] = dict(type="retrieval", split="test", num_examples=64, language=language)
  config = tiny_config(tiny_data_dir, total_steps=2, evals=evals, mesh=MESH,
                       **{"input.languages": dict(en=1.0, de=1.0, fr=1.0), "tokenizer.vocab_size": 160})
  results = train_lib.train(config, str(tmp_path / "run"))
  tokenizer = Tokenizer.load(str(tmp_path / "run" / "tokenizer.model"))
  pieces = {tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)}
  assert any("ß" in p or "é" in p for p in pieces)  # the letters of German and French are pieces
  assert results["zeroshot_en/top1"] == results["zeroshot/top1"]
  assert results["retrieval_en/image_to_text_R@1"] == results["retrieval/image_to_text_R@1"]
  for language in ("de", "fr"):
    assert 0.0 <= results[f"zeroshot_{language}/top1"] <= 1.0
    assert results[f"retrieval_{language}/texts"] == 64
  assert json.load(open(tmp_path / "run" / "config.json"))["input"]["languages"] == dict(en=1.0, de=1.0, fr=1.0)


def test_language_prompts_share_one_layout(tiny_tokenizer):
  import ml_collections
  input_config = ml_collections.ConfigDict(dict(prompt="caption {language}", languages=dict(en=1.0, de=0.0, fr=1.0)))
  assert pipeline.prompt_languages(input_config) == ("de", "en", "fr")  # weight 0 too: it can be asked for
  prompts = {k: pipeline.prompt_ids(tiny_tokenizer, input_config, k) for k in ("de", "en", "fr")}
  assert len({len(p) for p in prompts.values()}) == 1
  for k, ids in prompts.items():
    pieces = tiny_tokenizer.pieces([f"caption {k}"])[0]
    assert ids[len(ids) - len(pieces):] == tuple(pieces) and set(ids[:len(ids) - len(pieces)]) <= {0}
  assert pipeline.prompt_ids(tiny_tokenizer, input_config) == prompts["en"]
  with pytest.raises(pipeline.LanguageError, match="input.prompt: no prompt in 'ja'"):
    pipeline.prompt_ids(tiny_tokenizer, input_config, "ja")


def test_reference_captions_per_language():
  example = shapes.make_example(0, "train", 5, 32)
  assert shapes.reference_captions(example["objects"], "en") == shapes.reference_captions(example["objects"])
  for language, text in example["translations"].items():
    references = shapes.reference_captions(example["objects"], language)
    assert text in references and len(references) == len(shapes.reference_captions(example["objects"]))
    assert all(shapes.detect_language(r) == language for r in references)
  assert shapes.detect_language(example["caption"]) == "en" and shapes.detect_language("xyz") == ""


def test_multilingual_vlm(tiny_data_dir, tmp_path):
  """A VLM whose prompt names the language trains on a mix, each example prompted in its caption's
  language, and is evaluated per language with the language's references and fidelity."""
  from vlmjax import experiment
  from vlmjax.data.tokenizer import Tokenizer
  evals = {f"caption_{k}": dict(type="captioning", split="test", num_examples=16, max_new_tokens=6, language=k)
           for k in ("en", "fr")}
  config = tiny_config(tiny_data_dir, total_steps=2, mesh=MESH, evals=evals, **{
      "model": dict(name="vlm", image=dict(variant="mu/8", width=32, depth=1, mlp_dim=64, num_heads=2),
                    decoder=dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=2), projector=dict(kind="mlp")),
      "objectives": dict(ntp=dict(weight=1.0)), "input.max_text_len": 24,
      "input.prompt": "caption {language}", "input.languages": dict(en=1.0, de=0.0, fr=1.0),
      "tokenizer.vocab_size": 160})
  results = train_lib.train(config, str(tmp_path / "run"))
  for k in ("en", "fr"):
    assert 0.0 <= results[f"caption_{k}/language_fidelity"] <= 1.0 and f"caption_{k}/CIDEr" in results
  # The examples: French captions after the French prompt, English after the English one.
  tokenizer = Tokenizer.load(str(tmp_path / "run" / "tokenizer.model"))
  built = experiment.build(config, tokenizer.vocab_size, validate=False,
                           prompt_len=len(pipeline.prompt_ids(tokenizer, config.input)))
  preprocess = built.preprocess(tokenizer)
  source = sources.make_source(config.data, "train")
  n = built.model.num_image_tokens(32)
  seen = set()
  for i in range(12):
    example = preprocess.random_map(source[0], np.random.default_rng(i))
    prompt = tuple(int(t) for t in example["tokens"][n + 1:n + 1 + len(pipeline.prompt_ids(tokenizer, config.input))])
    caption = tokenizer.decode([example["tokens"][n + 1 + len(prompt):]])[0]
    language = {pipeline.prompt_ids(tokenizer, config.input, k): k for k in ("de", "en", "fr")}[prompt]
    assert shapes.detect_language(caption) == language
    seen.add(language)
  assert seen == {"en", "fr"}  # German has weight 0: never drawn
