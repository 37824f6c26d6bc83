"""Vision-language model: image tower -> projector -> image tokens in a causal decoder.

The token sequence holds `IMAGE_TOKEN` placeholders; the projected image tokens fill them in order
(`vlmjax.batch_spec.caption_sequence` builds `[image × N] BOS prompt caption EOS pad`). The image
block attends bidirectionally, text causally (`attention_mask` kinds); with
`input.prefix_attention='bidirectional'` BOS and the prompt join the image's block (PaliGemma's
prefix-LM). Configs pick the pieces: `projector.kind` linear (LiMBeR / VLAP), mlp (LLaVA),
hreducer (DocOwl) or tome (SimVLG's token merging connector); `decoder.pdrop_layers` for
PyramidDrop; `optimizer.frozen` to freeze towers. `extra_images` adds image towers (params
`image_1`, `image_2`, ...) whose token grids are concatenated with the first's, channel by channel,
before the projector (SPHINX's mixing of visual embeddings): every tower must give as many tokens.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.data.tokenizer import EOS
from vlmjax.models.decoder import (BIDIRECTIONAL, CAUSAL, IMAGE_TOKEN, PAD, Decoder, decoder_kwargs, rank_query_mask,
                                   take_rows)
from vlmjax.models.projectors import Projector
from vlmjax.models.sizes import decode_variant
from vlmjax.models.vit import ViT


@registry.register("model", "vlm")
class VLM(nn.Module):
  """images [B, S, S, 3], tokens [B, T] (IMAGE_TOKEN slots), attention_mask [B, T] kinds,
  loss_weights [B, T] (only to find PyramidDrop's ranking queries) -> dict of

  - `logits` [B, T, V] float32: next-token logits at every position;
  - `image_code` [B, D]: the mean of the projected image tokens (VLAP's and CG-VLM's visual
    representation);
  - `word_embeddings` [V, D]: the decoder's input embedding table (outside decoding);
  - with `assignment_codes`: `text_code` [B, D], the mean final hidden state of the decoder run on
    the text tokens alone (VLAP's text representation; stop-gradient: the target side);
  - with `sequence_codes` (Sugar): the decoder's final hidden state at the last token of the image
    alone, `[image × N] EOS` -> `image_state` [B, D]; of the text alone, `BOS caption EOS` ->
    `text_state` [B, D]; and of each hard-negative caption when `negative_texts` [B, K, T] is given
    -> `negative_text_states` [B, K, D].

  Without images (generation steps after the prefill) only the tokens run. `stop_image_gradient`
  cuts the backward pass at the image tower's output: with a frozen tower (LiMBeR, VLAP) its
  gradient would be computed only to be thrown away.
  """
  image: dict
  decoder: dict
  vocab_size: int
  projector: dict | None = None  # default: {'kind': 'mlp'}
  extra_images: tuple = ()  # more image tower configs, like `image`: params image_1, image_2, ...
  stop_image_gradient: bool = False
  assignment_codes: bool = False
  sequence_codes: bool = False
  eos_id: int = EOS  # the last token of the image-alone sequence (sequence_codes)
  decode: bool = False
  dtype: jnp.dtype = jnp.float32

  batch_keys = {"images": "image", "tokens": "tokens", "attention_mask": "attention_mask",
                "loss_weights": "loss_weights", "negative_texts": "negative_text"}
  towers = {"image": ViT, "decoder": Decoder}

  def image_kwargs(self, tower: dict | None = None) -> dict:
    """The ViT arguments of `tower` (default: the first image tower, `image`)."""
    config = dict(self.image if tower is None else tower)
    return {**decode_variant(config.pop("variant", "S/16")), **config}

  def image_features(self, images, train: bool):
    """images [B, S, S, 3] -> the towers' token features [B, N, sum of widths], concatenated."""
    features = []
    for i, tower in enumerate((self.image, *self.extra_images)):
      kwargs = self.image_kwargs(tower)
      features.append(ViT(**kwargs, dtype=self.dtype, name=f"image_{i}" if i else "image")(images, train)[1])
      if features[-1].shape[1] != features[0].shape[1]:
        raise ValueError(f"VLM: model.extra_images[{i - 1}] gives {features[-1].shape[1]} tokens, model.image "
                         f"{features[0].shape[1]}: concatenated towers need one token grid")
    return features[0] if len(features) == 1 else jnp.concatenate(features, axis=-1)

  def make_projector(self, **kwargs) -> Projector:
    config = dict(self.projector or {"kind": "mlp"})
    return Projector(**config, out_dim=decoder_kwargs(self.decoder)["width"], dtype=self.dtype, **kwargs)

  def num_image_tokens(self, image_size: int) -> int:
    """How many image tokens (placeholders) a sequence needs for images of `image_size`."""
    grid = image_size // self.image_kwargs()["patch_size"]
    return self.make_projector(parent=None).num_output_tokens(grid * grid)

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    """The image and the decoder sequence with its image slots (`batch_spec.caption_fields`)."""
    return (batch_spec.IMAGE, *batch_spec.caption_fields(self.num_image_tokens(input_config.image_size), prompt_len))

  @nn.compact
  def __call__(self, images=None, tokens=None, attention_mask=None, loss_weights=None, negative_texts=None,
               train: bool = False):
    if tokens is None:
      raise ValueError("VLM: 'tokens' are required (the image goes into their IMAGE_TOKEN slots)")
    decoder = Decoder(**decoder_kwargs(self.decoder), vocab_size=self.vocab_size, decode=self.decode,
                      dtype=self.dtype, name="decoder")
    out, image_embeddings = {}, None
    if images is not None:
      features = self.image_features(images, train)
      if self.stop_image_gradient:
        features = jax.lax.stop_gradient(features)
      image_embeddings = self.make_projector(name="projector")(features, train)
      out["image_code"] = image_embeddings.astype(jnp.float32).mean(axis=1)
    kinds = jnp.where(tokens != PAD, CAUSAL, PAD) if attention_mask is None else attention_mask
    rank_queries = None if loss_weights is None else rank_query_mask(kinds, loss_weights)
    result = decoder(tokens, kinds, image_embeddings, rank_queries, train)
    out["logits"] = result["logits"]
    if self.decode:
      return out
    out["word_embeddings"] = result["embedding"]
    if self.assignment_codes or self.sequence_codes:
      # The text alone: the non-image tokens moved to the front, in order.
      is_image = tokens == IMAGE_TOKEN
      order = jnp.argsort(is_image, axis=1, stable=True)
      length = tokens.shape[1] - (0 if image_embeddings is None else image_embeddings.shape[1])
      text = take_rows(jnp.where(is_image, PAD, tokens), order)[:, :length]
      text_kinds = jnp.where(text != PAD, CAUSAL, PAD)
      hidden = decoder(text, text_kinds, train=train)["hidden"]
    if self.assignment_codes:
      valid = (text_kinds > PAD)[..., None].astype(jnp.float32)
      out["text_code"] = jax.lax.stop_gradient((hidden * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0))
    if self.sequence_codes:
      out["text_state"] = last_state(hidden, text_kinds)
      if negative_texts is not None:
        b, k, t = negative_texts.shape
        negatives = negative_texts.reshape(b * k, t)
        negative_kinds = jnp.where(negatives != PAD, CAUSAL, PAD)
        negative_hidden = decoder(negatives, negative_kinds, train=train)["hidden"]
        out["negative_text_states"] = last_state(negative_hidden, negative_kinds).reshape(b, k, -1)
      if image_embeddings is not None:
        b, n = image_embeddings.shape[:2]
        alone = jnp.concatenate([jnp.full((b, n), IMAGE_TOKEN, tokens.dtype),
                                 jnp.full((b, 1), self.eos_id, tokens.dtype)], axis=1)
        alone_kinds = jnp.concatenate([jnp.full((b, n), BIDIRECTIONAL, kinds.dtype),
                                       jnp.full((b, 1), CAUSAL, kinds.dtype)], axis=1)
        out["image_state"] = decoder(alone, alone_kinds, image_embeddings, train=train)["hidden"][:, -1]
    return out


def last_state(hidden, kinds):
  """hidden [B, T, D], kinds [B, T] -> the hidden state at each row's last non-padding token [B, D]."""
  last = jnp.maximum((kinds > PAD).sum(1) - 1, 0)
  return take_rows(hidden, last[:, None])[:, 0]
