"""A decoder started from a weight mix of two runs: SPHINX's mixing of LLM weights (Lin et al. 2023).

After `init` has loaded the params (θ_A: for a VLM, its decoder from one LM run), the params
matching `params` become α·θ_A + (1 − α)·θ_B, θ_B those of the run or bundle `workdir` (another LM
run, trained on other data from the same tokenizer). The mix is computed in float32 (WiSE-FT's
`mix`). A config asks for it under `init.fit`:

    c.init.fit = dict(weight_mix=dict(workdir="workdirs/lm_text_only_long", alpha=0.5, params="^decoder/"))

B must hold every matching param at the same shape and, when the token embeddings are mixed, write
its texts with the run's tokenizer (its rows would mean other pieces): either is a one-line error.
"""
import re

import jax
import ml_collections
import numpy as np

from vlmjax import registry
from vlmjax.data.tokenizer import Tokenizer
from vlmjax.init_from import TOKEN_EMBEDDINGS, inherited_tokenizer, init_params_from, merge, select
from vlmjax.wise_ft import mix


@registry.register("fit", "weight_mix")
class WeightMix:
  """`workdir`: θ_B's run or bundle; `alpha`: θ_A's weight in [0, 1]; `params`: the regex of the mixed params."""

  def __init__(self, workdir: str = "", alpha: float = 0.5, params: str = "^decoder/"):
    if not workdir or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
      raise ValueError(f"init.fit.weight_mix: needs a workdir and alpha in [0, 1] (got {workdir!r}, {alpha!r})")
    self.workdir, self.alpha, self.params = workdir, float(alpha), params

  def __call__(self, params, model, tokenizer, config, workdir: str = ""):
    """-> params with those matching `self.params` mixed."""
    del model, config, workdir
    if any(re.search(self.params, name) for name in TOKEN_EMBEDDINGS):
      path = inherited_tokenizer(ml_collections.ConfigDict(dict(workdir=self.workdir, params=self.params, also={})))
      if path and tokenizer is not None and Tokenizer.load(path).serialize() != tokenizer.serialize():
        raise ValueError(f"init.fit.weight_mix: {self.workdir} writes its texts with another tokenizer than this "
                         "run's; its token embeddings mean other pieces")
    try:
      other = init_params_from(self.workdir, params, self.params)
    except ValueError as e:
      raise ValueError(f"init.fit.weight_mix: {e}") from None
    a, b = select(params, self.params), select(other, self.params)
    mixed = mix(jax.device_get(b), jax.device_get(a), self.alpha)  # (1 − α)·B + α·A
    placed = jax.tree.map(lambda m, x: jax.device_put(np.asarray(m, x.dtype), x.sharding), mixed, a)
    return merge(params, placed)
