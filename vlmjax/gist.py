"""GIST: image-specific descriptions for a labelled image set, matched by a trained CLIP.

  python -m vlmjax.gist --workdir workdirs/clip --out workdirs/gist [--text descriptions|names]

For each class, descriptions are written from templates that add the details a class name leaves
out (a size, a place in the picture: 'a small red circle on the left', `classes.class_descriptions`);
GIST writes them with an LLM. The run in --workdir then embeds every labelled training image and its class's descriptions
and keeps the description that matches the image best. Written to --out:

- `captions.tsv`: `index<TAB>description` per labelled training record (`data.caption_file`);
- `subset.txt`: those records' indices (`data.subset_file`), the images GIST fine-tunes on.

`--text names` writes each record's class name instead ('a red circle'): the labels-as-text
baseline GIST compares with. Fine-tune on them with configs/gist.py.
"""
import os

from absl import app, flags
import numpy as np

from vlmjax import cli, config as config_lib
from vlmjax.data import pipeline, recaption, sources, subset
from vlmjax.evals import classes
from vlmjax.evals.common import Embedder
from vlmjax.metrics import quiet_absl_logging
from vlmjax.run import RunDir

TEXTS = ("descriptions", "names")


def best_descriptions(workdir: str, batch_size: int = 256, text: str = "descriptions") -> tuple[dict, int]:
  """{train record index: its class's description that the run in `workdir` scores highest
  against the image} for every labelled record, and the split's size. `text='names'`: the class
  name alone (its first description), nothing matched."""
  loaded = RunDir(workdir).load()
  config = loaded.config
  source = sources.make_source(config.data, config.data.train_split)
  class_names = list(getattr(source, "class_names", ()) or ())
  if not class_names:
    raise ValueError(f"gist: the training data of '{workdir}' has no class names (records need a label)")
  embedder = Embedder(loaded.model, loaded.params, loaded.experiment.mesh, batch_size)
  texts = [classes.class_descriptions(name)[:1 if text == "names" else None] for name in class_names]
  tokens = loaded.tokenizer.encode([t for group in texts for t in group], config.input.max_text_len)
  text_embeds = embedder.embed_texts(tokens).reshape(len(class_names), len(texts[0]), -1)
  preprocess = pipeline.Preprocess(loaded.tokenizer, config.input.image_size, config.input.max_text_len,
                                   passthrough=("label",), input_config=config.input)
  chosen = {}
  for batch in pipeline.eval_batches(source, preprocess, batch_size):
    labelled = np.asarray(batch["label"]) >= 0
    if not labelled.any():
      continue
    images = embedder.embed_images(np.asarray(batch["image"])[labelled])
    labels = np.asarray(batch["label"])[labelled]
    scores = np.einsum("nd,nkd->nk", images, text_embeds[labels])
    for index, label, best in zip(np.asarray(batch["index"])[labelled], labels, scores.argmax(1)):
      chosen[int(index)] = texts[int(label)][int(best)]
  if not chosen:
    raise ValueError(f"gist: no training record of '{workdir}' has a label")
  return chosen, len(source)


def write(workdir: str, out: str, text: str = "descriptions") -> tuple[int, int]:
  if text not in TEXTS:
    raise ValueError(f"gist: --text '{text}' must be one of {', '.join(TEXTS)}")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"gist: --workdir '{workdir}' does not exist (a trained dual-encoder run)")
  chosen, size = best_descriptions(workdir, text=text)
  os.makedirs(out, exist_ok=True)
  about = f"vlmjax.gist --workdir {workdir} --text {text}\n{len(chosen)} labelled records of {size}"
  recaption.write_captions(os.path.join(out, "captions.tsv"), chosen, about)
  subset.write_indices(os.path.join(out, "subset.txt"), sorted(chosen), about)
  return len(chosen), size


def main(argv):
  quiet_absl_logging()
  if len(argv) > 1:
    cli.fail("gist", f"gist: unexpected arguments: {' '.join(argv[1:])}")
  try:
    count, size = write(FLAGS.workdir, FLAGS.out, FLAGS.text)
  except (OSError, ValueError, config_lib.ConfigError) as e:
    cli.fail("gist", e)
  print(f"Wrote {FLAGS.out}/captions.tsv and subset.txt: {count} labelled records of {size}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("workdir", None, "A trained dual-encoder run that matches descriptions to images.", required=True)
  flags.DEFINE_string("out", None, "The folder to write captions.tsv and subset.txt into.", required=True)
  flags.DEFINE_enum("text", "descriptions", list(TEXTS), "The matched descriptions, or the class names alone.")
  app.run(main, flags_parser=cli.flags_parser("gist"))
