"""LXMERT's two-stream fusion encoder: objects and words, each with its own encoder, then cross-modal
layers that let each stream attend to the other.

images [B, S, S, 3] and region_boxes [B, K, 4] (x0, y0, x1, y1 in [0, 1]), region_valid [B, K] ->
object features: the image tower's patch tokens pooled inside each box (the detector features LXMERT
reads) plus an embedding of the box, and `region_masked` [B, K] objects replaced by a learned mask
vector (masked-object prediction). A text [B, T] (BOS first) -> word embeddings plus positions.

`object_layers` and `language_layers` self-attention blocks, then `cross_layers` cross-modal layers:
in each, both streams take the other's states from before the layer as context (`layers.Block`
with cross-attention: self-attention, cross-attention, MLP). Heads, on the states they read:

- `mlm_logits` [B, T, V]: the words of `masked_texts` (masked language modelling);
- `attribute_logits` [B, K, Σ attribute_classes]: each object's attributes, on the pass with
  `masked_texts` (masked-object attribute prediction);
- `itm_logits` [B]: does `itm_texts` describe the image (on the BOS state)? `itm_random_logits` [B]:
  the same for the batch's captions rolled by one (random negatives);
- `answer_logits` [B, A]: the answer to `question_texts` among `num_answers` (on the BOS state).
"""
import flax.linen as nn
import jax.numpy as jnp

from vlmjax import batch_spec, registry
from vlmjax.data import regions
from vlmjax.models import layers
from vlmjax.models.dual_encoder import l2_normalize
from vlmjax.models.sizes import decode_variant
from vlmjax.models.vit import ViT


def region_embeddings(image_tokens, boxes, valid):
  """image_tokens [B, N, E] (projected, a square patch grid), boxes [B, K, 4] (x0, y0, x1, y1 in
  [0, 1]), valid [B, K] -> [B, K, E]: the mean of the tokens inside each box, L2-normalised."""
  grid = int(round(image_tokens.shape[1] ** 0.5))
  if grid * grid != image_tokens.shape[1]:
    raise ValueError(f"region embeddings need a square patch grid, got {image_tokens.shape[1]} image tokens")
  weights = regions.token_weights(boxes, valid, grid)
  pooled = jnp.einsum("bkn,bne->bke", weights, image_tokens.astype(jnp.float32))
  # An invalid region pools nothing: a zero vector, whose norm has a NaN gradient. It is given the
  # image's mean token instead (a loss masks it out; only its gradient must stay finite).
  pooled = jnp.where(valid[..., None], pooled, image_tokens.astype(jnp.float32).mean(axis=1, keepdims=True))
  return l2_normalize(pooled)


def _dense(features: int, name: str, dtype, axes=("embed", "mlp")):
  return nn.Dense(features, dtype=dtype, name=name, kernel_init=layers.kernel_init(axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


class FusionEncoder(nn.Module):
  image: dict
  vocab_size: int
  width: int = 128
  num_heads: int = 4
  language_layers: int = 2
  object_layers: int = 1
  cross_layers: int = 2
  max_len: int = 32
  attribute_classes: tuple = (6, 6, 2)  # the built-in dataset's colours, shapes, sizes
  num_answers: int = 0
  dtype: jnp.dtype = jnp.float32

  batch_keys = {"images": "image", "region_boxes": "region_boxes", "region_valid": "region_valid",
                "region_masked": "region_masked", "masked_texts": "masked_text", "itm_texts": "itm_text",
                "texts": "text", "question_texts": "question_text"}
  towers = {"image": ViT}

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    del input_config, prompt_len
    return (batch_spec.IMAGE, batch_spec.TEXT, regions.REGION_BOXES, regions.REGION_VALID)

  def setup(self):
    image = {**decode_variant(self.image.get("variant", "S/16")), **{
        k: v for k, v in self.image.items() if k != "variant"}}
    self.image_tower = ViT(**image, dtype=self.dtype, name="image")
    self.object_in = _dense(self.width, "object_in", self.dtype)
    self.box_in = _dense(self.width, "box_in", self.dtype)
    self.mask_vector = self.param("object_mask", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                                  (self.width,))
    self.token_embed = nn.Embed(self.vocab_size, self.width, name="token_embed", embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")))
    self.positions = self.param("pos_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.01), (None, "length", "embed")), (1, self.max_len, self.width))
    block = dict(num_heads=self.num_heads, mlp_dim=4 * self.width, dtype=self.dtype)
    self.language_encoder = layers.Transformer(self.language_layers, block, scan=False, final_norm=False,
                                               name="language")
    self.object_encoder = layers.Transformer(self.object_layers, block, scan=False, final_norm=False, name="objects")
    self.cross_language = [layers.Block(**block, cross_attention=True, name=f"cross_language_{i}")
                           for i in range(self.cross_layers)]
    self.cross_objects = [layers.Block(**block, cross_attention=True, name=f"cross_objects_{i}")
                          for i in range(self.cross_layers)]
    self.final_language = layers.Norm("layer", "final_language")
    self.final_objects = layers.Norm("layer", "final_objects")
    self.mlm_head = _dense(self.vocab_size, "mlm_head", self.dtype, ("embed", "vocab"))
    self.itm_head = _dense(1, "itm_head", self.dtype, ("embed", None))
    self.attribute_head = _dense(sum(self.attribute_classes), "attribute_head", self.dtype, ("embed", None))
    if self.num_answers:
      self.answer_head = _dense(self.num_answers, "answer_head", self.dtype, ("embed", None))

  def objects(self, images, region_boxes, region_valid, region_masked, train):
    """-> object features [B, K, W] and their key mask [B, K]."""
    _, tokens = self.image_tower(images, train)
    pooled = region_embeddings(tokens, region_boxes, jnp.asarray(region_valid) > 0)
    x = self.object_in(pooled) + self.box_in(region_boxes)
    if region_masked is not None:
      x = jnp.where(jnp.asarray(region_masked)[..., None] > 0, self.mask_vector.astype(x.dtype), x)
    valid = jnp.asarray(region_valid) > 0
    # A scene whose regions were all cropped away: its first slot stays a key, so attention is defined.
    valid = valid.at[:, 0].set(True)
    return self.object_encoder(x, valid[:, None, None, :]), valid

  def fuse(self, texts, objects, object_valid):
    """One pass of a text through the language and cross-modal layers -> (word states [B, T, W],
    object states [B, K, W])."""
    if texts.shape[1] > self.max_len:
      raise ValueError(f"text length {texts.shape[1]} exceeds the fusion encoder's max_len {self.max_len}")
    words = texts > 0
    x = (self.token_embed(texts) + self.positions[:, :texts.shape[1]]).astype(self.dtype)
    x = self.language_encoder(x, words[:, None, None, :])
    o = objects
    for to_language, to_objects in zip(self.cross_language, self.cross_objects):
      x, o = (to_language(x, words[:, None, None, :], context=o, context_mask=object_valid),
              to_objects(o, object_valid[:, None, None, :], context=x, context_mask=words))
    return self.final_language(x), self.final_objects(o)

  def __call__(self, images=None, region_boxes=None, region_valid=None, region_masked=None, masked_texts=None,
               itm_texts=None, texts=None, question_texts=None, train: bool = False):
    out = {}
    if images is None:
      return out
    if self.is_initializing() and texts is not None:  # every head's params, from the model's own fields
      masked_texts, itm_texts, question_texts = (t if t is not None else texts
                                                 for t in (masked_texts, itm_texts, question_texts))
    objects, valid = self.objects(images, region_boxes, region_valid, region_masked, train)
    if masked_texts is not None:
      words, objs = self.fuse(masked_texts, objects, valid)
      out["mlm_logits"] = self.mlm_head(words).astype(jnp.float32)
      out["attribute_logits"] = self.attribute_head(objs).astype(jnp.float32)
    if itm_texts is not None:
      out["itm_logits"] = self.itm_head(self.fuse(itm_texts, objects, valid)[0][:, 0])[:, 0].astype(jnp.float32)
    if texts is not None:  # the batch's captions rolled by one: each image with another scene's caption
      rolled = jnp.roll(texts, 1, axis=0)
      out["itm_random_logits"] = self.itm_head(self.fuse(rolled, objects, valid)[0][:, 0])[:, 0].astype(jnp.float32)
    if question_texts is not None and self.num_answers:
      out["answer_logits"] = self.answer_head(self.fuse(question_texts, objects, valid)[0][:, 0]).astype(jnp.float32)
    return out


registry.register("model", "fusion")(FusionEncoder)
