"""The tokenizer a training run uses: one it finds (the config's, the run's own, or that of the source
its token embeddings come from), else one trained on the training captions and saved in the run."""
import os

from absl import logging
import jax

from vlmjax.data import pipeline
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.init_from import inherited_tokenizer
from vlmjax.run import RunDir


def existing_tokenizer(config, run: RunDir) -> str | None:
  """The tokenizer file a run uses when it needs not train one: the config's; else the run's; else that of
  the run or bundle `config.init` takes the token embeddings from."""
  path = run.tokenizer_file(config)
  if config.tokenizer.path or os.path.exists(path):
    return path
  return inherited_tokenizer(config.init)


def tokenizer_languages(config) -> tuple:
  """The languages whose captions the tokenizer learns: `tokenizer.languages`, else those of
  `input.languages`; () = the caption text as the run reads it."""
  return tuple(config.tokenizer.get("languages") or (name for name, _ in pipeline.language_mix(config.input)))


def get_tokenizer(config, run: RunDir, train_source) -> Tokenizer:
  """`existing_tokenizer` (an init source's copied into the run); else one trained on the training captions."""
  path, found = run.tokenizer_file(config), existing_tokenizer(config, run)
  if found:
    tokenizer = Tokenizer.load(found)
    if found != path:
      logging.info("Using the tokenizer of %s, whose token embeddings the run starts from", found)
      if jax.process_index() == 0:
        tokenizer.save(path)
    return tokenizer
  count = min(config.tokenizer.train_examples, len(train_source))
  logging.info("Training a %d-piece SentencePiece tokenizer on %d captions", config.tokenizer.vocab_size, count)
  records = (train_source[i] for i in range(count))
  field = pipeline.caption_field(config.input)
  good = (r for r in records
          if not isinstance(r, pipeline.BadRecord) and not pipeline.record_problem(r, config.data.max_caption_chars))
  languages = tokenizer_languages(config)
  if languages:  # one tokenizer for every language of the mix: each record's caption in each
    caption_language = config.data.get("caption_language", "en")
    pipeline.check_languages(languages, train_source, "tokenizer.languages")
    texts = (pipeline.caption_in(r, language, caption_language) for r in good for language in languages)
  else:
    texts = (pipeline.tokenizer_text(r, field) for r in good)
  tokenizer = Tokenizer.train(texts, config.tokenizer.vocab_size, config.tokenizer.get("model_type", "bpe"))
  if jax.process_index() == 0:
    tokenizer.save(path)
  return tokenizer
