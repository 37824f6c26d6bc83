"""Start some params from another run or a bundle (`config.init`): big_vision's model_init.

`init_params_from(path, params, pattern)` replaces the leaves of `params` whose path matches
`pattern` (e.g. '^image/', LiT: start from a trained tower, then lock it) with those of the newest
checkpoint of the run folder at `path`, or of the bundle there (imported open_clip / HF weights).
A decoder laid out in other PyramidDrop stages is re-split into this model's stages, and a ViT
position table learned at another image size or patch grid is resampled to this model's grid.
"""
import os
import re

import jax

from vlmjax.config import init_sources
from vlmjax.models.decoder import restage
from vlmjax.run import Bundle, RunDir, open_run, resample_posembs

TOKEN_EMBEDDINGS = ("text/token_embed/embedding", "decoder/embedding")  # rows indexed by tokenizer ids


def inherited_tokenizer(init) -> str | None:
  """The tokenizer file of the first run or bundle in `init` (`config.init`) whose token embeddings the run
  starts from, if it has one: those rows mean that tokenizer's ids, so the run must write its texts with it."""
  for source_path, pattern, _ in init_sources(init):
    if not any(re.search(pattern, name) for name in TOKEN_EMBEDDINGS):
      continue
    source = open_run(source_path)
    if isinstance(source, RunDir) and os.path.exists(source.file(RunDir.CONFIG)):
      path = source.tokenizer_file(source.read_config())
    else:
      path = source.file(source.TOKENIZER)
    return path if os.path.exists(path) else None
  return None


def select(tree, pattern: str, prefix: str = ""):
  """The nested-dict subtree of leaves whose '/'-joined path matches `pattern` (re.search)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      sub = select(value, pattern, path + "/")
      if sub:
        out[key] = sub
    elif re.search(pattern, path):
      out[key] = value
  return out


def merge(tree, update):
  return {k: merge(v, update[k]) if isinstance(v, dict) and k in update else update.get(k, v)
          for k, v in tree.items()}


def init_params_from(path: str, params, pattern: str, step: int | None = None, into: dict | None = None):
  """`params` with the leaves matching `pattern` taken from the run or bundle at `path`.

  `into` maps the source's top-level names to this model's ({'image': 'image_1'}: the source's
  `image/...` params, matched by `pattern` under their own names, become this model's `image_1/...`).
  A ViT position table of a source at another image size or patch grid is resampled to this
  model's grid (`run.resample_posembs`). Raises ValueError naming the source, or the first param
  missing from it or of another shape.
  """
  if into:
    missing = [name for name in into.values() if name not in params]
    if missing:
      raise ValueError(f"init.also: 'into' names '{missing[0]}', which this model has no params under "
                       f"(it has: {', '.join(sorted(params))})")
    view = init_params_from(path, {source: params[name] for source, name in into.items()}, pattern, step)
    return {**params, **{name: view[source] for source, name in into.items()}}
  wanted = select(params, pattern)
  if not wanted:
    raise ValueError(f"init.params: '{pattern}' matches no parameter of this model")
  source = open_run(path)
  if isinstance(source, Bundle):
    return merge(params, _from_bundle(source, wanted, pattern))
  if not source.steps():
    raise ValueError(f"init.workdir: no checkpoint in {source.checkpoint_dir}")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), wanted)
  try:
    loaded, _ = source.restore_params(abstract, step)
  except (ValueError, KeyError, FileNotFoundError) as e:
    loaded = _adapted(source, wanted, step)
    if loaded is None:
      raise ValueError(f"init.workdir: {path} does not hold params matching '{pattern}' with this "
                       f"model's shapes ({str(e).splitlines()[0][:200]})") from None
  # A param the pattern matches but the checkpoint lacks comes back unread: name it, rather than
  # train from a placeholder (a new module's params under a loaded tower: narrow the pattern).
  unread = [path for path, x in jax.tree_util.tree_leaves_with_path(loaded) if isinstance(x, jax.ShapeDtypeStruct)]
  if unread:
    name = "/".join(str(getattr(k, "key", k)) for k in unread[0])
    raise ValueError(f"init.workdir: {path} has no param '{name}' (matching init.params '{pattern}'); leave it out "
                     "of the pattern to start it fresh")
  return merge(params, loaded)


def _adapted(source: RunDir, wanted, step):
  """`wanted` from the run's params read at their own shapes and fitted to this model's: a decoder
  laid out in other PyramidDrop stages (an LM run starting a PyramidDrop VLM) re-split into this
  model's stages, a ViT position table of another grid resampled; None when the shapes still differ."""
  try:
    params = jax.device_get(source.load(step).params)
    if "decoder" in wanted and "decoder" not in params:
      return None
    others = {k: v for k, v in wanted.items() if k != "decoder"}
    tree = _select_like(resample_posembs(params, others), others)  # the whole tree: a ViT's is found by its patch_embed
    if "decoder" in wanted:
      tree["decoder"] = restage(params["decoder"], wanted["decoder"])

    def place(x, w):
      if tuple(x.shape) != tuple(w.shape):
        raise ValueError(f"shape {tuple(x.shape)} against {tuple(w.shape)}")
      return jax.device_put(jax.numpy.asarray(x, w.dtype), w.sharding)
    return jax.tree.map(place, tree, wanted)
  except (ValueError, KeyError, TypeError, FileNotFoundError):
    return None


def _select_like(source, like):
  """The subtree of `source` with the keys of `like` (KeyError when one is missing)."""
  if isinstance(like, dict):
    return {k: _select_like(source[k], v) for k, v in like.items()}
  return source


def _from_bundle(bundle: Bundle, wanted, pattern: str):
  """The leaves of `wanted` (arrays) from a bundle's params, cast and placed like them; a ViT
  position table of another grid resampled to this model's."""
  loaded = select(resample_posembs(bundle.read_params(), wanted), pattern)

  def take(path, x):
    y = loaded
    for k in path:
      key = getattr(k, "key", k)
      if not isinstance(y, dict) or key not in y:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise ValueError(f"init.workdir: bundle {bundle.path} has no param '{name}' (matching '{pattern}')")
      y = y[key]
    if tuple(y.shape) != tuple(x.shape):
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      raise ValueError(f"init.workdir: bundle {bundle.path} param '{name}' has shape {tuple(y.shape)}, this "
                       f"model's {tuple(x.shape)}")
    return jax.device_put(y.astype(x.dtype), x.sharding)

  return jax.tree_util.tree_map_with_path(take, wanted)
