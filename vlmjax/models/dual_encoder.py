"""Dual encoder (CLIP / ALIGN / SigLIP style): an image tower and a text tower meeting in one space."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlmjax import batch_spec, registry
from vlmjax.models import layers
from vlmjax.models.composer import Composer
from vlmjax.models.knowledge import KnowledgeEncoder
from vlmjax.models.pseudo_words import PseudoWordEncoder
from vlmjax.models.sizes import decode_variant
from vlmjax.models.text import TextTransformer
from vlmjax.models.vit import ViT


def l2_normalize(x, axis=-1, eps=1e-6):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


class DualEncoder(nn.Module):
  """images [B, H, W, 3], texts [B, T] -> dict of

  - `image_embeds` [B, E], `text_embeds` [B, E]: projected, L2-normalised, float32;
  - `image_tokens` [B, N, E], `text_tokens` [B, T, E], `text_mask` [B, T]: projected token
    embeddings (not normalised) for token-wise objectives;
  - `logit_scale` []: θ, the log of the contrastive temperature's inverse (scale = exp θ);
  - `logit_bias` []: b, for sigmoid losses;
  - `image_features` [B, Wi], `text_features` [B, Wt]: the towers' pooled outputs before projection;
  - `image_embeds_view2`, `text_embeds_view2` [B, E] for a second image view / text pass (TCL);
  - `negative_text_embeds` [B, K, E] when `negative_texts` [B, K, T] (hard-negative captions) is given;
  - `multi_text_embeds` [B, K, E] and `multi_text_valid` [B, K] when `multi_texts` [B, K, T] (several
    positive texts per image, DreamLIP) is given; `logit_scale_local` [] with `local_logit_scale`;
  - `region_text_embeds` [B, K, E] when `region_texts` [B, K, T] (each object's description) is given;
  - `attribute_logits` [B, Σ attribute_classes] with `attribute_classes` (a linear head on the image
    tower's pooled output predicting which attributes the scene shows, PLIP);
  - `knowledge_embeds`, `swapped_knowledge_embeds` [B, E] when `triplet_texts` [B, M, 3, T] (the
    scene graph) is given and `knowledge` (the keyword arguments of `KnowledgeEncoder`: width,
    depth, num_heads) is set: Structure-CLIP's knowledge embedding of the triplets, and of the
    same triplets with subject and object exchanged.
  - `composed_embeds` [B, E] when `composer` (the keyword arguments of `Composer`: width, depth,
    num_heads, num_queries) is set and both images and texts are given: SPRC's query from each
    reference image and its modification text; `target_image_embeds` [B, E] for `target_images`.
  - `pseudo_sentence_embeds` [B, E] when `pseudo_words` (the keyword arguments of
    `PseudoWordEncoder`: num_words, student, depth, num_heads) is set and images are given: ISA's
    light student writes each image as K pseudo-words [B, K, Wt], and the text tower and its
    projection embed them as a sentence; `pseudo_composed_embeds` [B, E] when texts are given too:
    the pseudo-words followed by the text's tokens (the text cut to its first max_len − K tokens).

  Either input may be None; its outputs are then absent.

  `image_head`, `text_head`: how a tower's outputs reach the shared space. 'proj' (CLIP's bias-free
  linear map, `<tower>_proj/kernel` [W, E]), 'proj_bias' (with a bias, `<tower>_proj/bias` [E]:
  big_vision's `head`, SigLIP's text side) or 'none' (the tower's width is the embedding: SigLIP's
  image side, big_vision's `out_dim=None`; needs width == embed_dim).
  """
  image: dict
  text: dict
  embed_dim: int
  vocab_size: int
  image_head: str = "proj"
  text_head: str = "proj"
  logit_scale_init: float = float(np.log(1 / 0.07))
  logit_bias_init: float = -10.0
  local_logit_scale: bool = False  # a second temperature, for DreamLIP's grouping loss
  attribute_classes: tuple = ()  # classes per attribute kind of the attribute head (): none
  knowledge: dict | None = None  # a scene-graph knowledge encoder (Structure-CLIP): None = none
  composer: dict | None = None  # a composed-query encoder (SPRC, composed image retrieval): None = none
  pseudo_words: dict | None = None  # a light image-to-pseudo-words student (ISA): None = none
  dtype: jnp.dtype = jnp.float32

  batch_keys = {"images": "image", "texts": "text", "negative_texts": "negative_text",
                "multi_texts": "multi_text", "images_view2": "image_view2",
                "texts_view2": "text_view2", "region_texts": "region_text",
                "triplet_texts": "triplet_text", "target_images": "target_image"}  # call argument -> batch key
  # config.model.<tower> -> its module, for validation; `model.text.kind` picks another text tower
  # (registry 'text_tower', e.g. 'gru': vlmjax.models.text_rnn)
  towers = {"image": ViT, "text": TextTransformer}

  def batch_fields(self, input_config, prompt_len: int = 0) -> tuple:
    """An image and its caption; objectives ask for more (hard negatives, second views, ...)."""
    del input_config, prompt_len
    return (batch_spec.IMAGE, batch_spec.TEXT)

  def setup(self):
    image = {**decode_variant(self.image.get("variant", "S/16")), **{
        k: v for k, v in self.image.items() if k != "variant"}}
    text_cls = registry.get("text_tower", self.text.get("kind", "transformer"))
    text = {k: v for k, v in self.text.items() if k not in ("variant", "kind")}
    if text_cls.sized_by_variant:
      text = {**decode_variant(self.text.get("variant", "S")), **text}
    self.image_tower = ViT(**image, dtype=self.dtype, name="image")
    self.text_tower = text_cls(vocab_size=self.vocab_size, **text, dtype=self.dtype, name="text")
    self.image_proj = self.projection("image", self.image_head, image["width"])
    self.text_proj = self.projection("text", self.text_head, text["width"])
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), ())
    self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())
    if self.local_logit_scale:
      self.logit_scale_local = self.param(
          "logit_scale_local", nn.initializers.constant(self.logit_scale_init), ())
    if self.knowledge:
      self.knowledge_encoder = KnowledgeEncoder(self.vocab_size, embed_dim=self.embed_dim, **self.knowledge,
                                                dtype=self.dtype, name="knowledge")
    if self.composer:
      self.composer_encoder = Composer(embed_dim=self.embed_dim, **self.composer, dtype=self.dtype, name="composer")
    if self.pseudo_words:
      if text_cls is not TextTransformer:
        raise ValueError(f"model.pseudo_words needs the transformer text tower, not model.text.kind "
                         f"'{self.text.get('kind')}' (its words are put before the text's token embeddings)")
      self.pseudo_word_encoder = PseudoWordEncoder(text["width"], **self.pseudo_words, dtype=self.dtype,
                                                   name="pseudo_words")
    if self.attribute_classes:
      self.attribute_head = nn.Dense(sum(self.attribute_classes), dtype=self.dtype, name="attribute_head",
                                     kernel_init=layers.kernel_init(("embed", "proj")),
                                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("proj",)))

  def projection(self, tower: str, head: str, width: int):
    """The map from a tower's width to the shared space ([.., W] -> [.., E]) that `head` names."""
    if head not in ("proj", "proj_bias", "none"):
      raise ValueError(f"unknown {tower}_head '{head}'; known: proj, proj_bias, none")
    if head == "none":
      if width != self.embed_dim:
        raise ValueError(f"{tower}_head 'none' needs the {tower} tower's width {width} to equal embed_dim "
                         f"{self.embed_dim}")
      return lambda x: x
    return nn.Dense(self.embed_dim, use_bias=head == "proj_bias", dtype=self.dtype, name=f"{tower}_proj",
                    kernel_init=layers.kernel_init(("embed", "proj")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("proj",)))

  def embed_text_sets(self, texts, train):
    """[B, K, T] -> [B, K, E], L2-normalised: K texts per example through the one text tower."""
    batch, k, length = texts.shape
    pooled, _, _ = self.text_tower(texts.reshape(batch * k, length), train)
    return l2_normalize(self.text_proj(pooled)).reshape(batch, k, -1)

  def __call__(self, images=None, texts=None, negative_texts=None, multi_texts=None, images_view2=None,
               texts_view2=None, region_texts=None, triplet_texts=None, target_images=None, train: bool = False):
    out = {"logit_scale": self.logit_scale, "logit_bias": self.logit_bias}
    if self.local_logit_scale:
      out["logit_scale_local"] = self.logit_scale_local
    if images is not None:
      pooled, tokens = self.image_tower(images, train)
      image_states = tokens
      out["image_features"] = pooled.astype(jnp.float32)
      out["image_embeds"] = l2_normalize(self.image_proj(pooled))
      out["image_tokens"] = self.image_proj(tokens).astype(jnp.float32)
      if self.attribute_classes:
        out["attribute_logits"] = self.attribute_head(pooled).astype(jnp.float32)
    if self.pseudo_words and images is not None:
      words = self.pseudo_word_encoder(images, train)  # [B, K, Wt]
      empty = jnp.zeros((words.shape[0], 0), jnp.int32)
      out["pseudo_sentence_embeds"] = l2_normalize(self.text_proj(self.text_tower(empty, train, prefix=words)[0]))
      if texts is not None:
        room = texts[:, :self.text_tower.max_len - words.shape[1]]
        out["pseudo_composed_embeds"] = l2_normalize(self.text_proj(self.text_tower(room, train, prefix=words)[0]))
    if texts is not None:
      pooled, tokens, mask = self.text_tower(texts, train)
      if self.composer and images is not None:
        out["composed_embeds"] = self.composer_encoder(tokens, mask, image_states)
      out["text_features"] = pooled.astype(jnp.float32)
      out["text_embeds"] = l2_normalize(self.text_proj(pooled))
      out["text_tokens"] = self.text_proj(tokens).astype(jnp.float32)
      out["text_mask"] = mask
    if target_images is not None:
      out["target_image_embeds"] = l2_normalize(self.image_proj(self.image_tower(target_images, train)[0]))
    if images_view2 is not None:
      out["image_embeds_view2"] = l2_normalize(self.image_proj(self.image_tower(images_view2, train)[0]))
    if texts_view2 is not None:  # the same tokens; only dropout makes this pass differ
      out["text_embeds_view2"] = l2_normalize(self.text_proj(self.text_tower(texts_view2, train)[0]))
    if negative_texts is not None:
      out["negative_text_embeds"] = self.embed_text_sets(negative_texts, train)
    if multi_texts is not None:
      out["multi_text_embeds"] = self.embed_text_sets(multi_texts, train)
      out["multi_text_valid"] = (multi_texts != 0).any(axis=-1)
    if region_texts is not None:
      out["region_text_embeds"] = self.embed_text_sets(region_texts, train)
    if self.knowledge and triplet_texts is not None:
      out["knowledge_embeds"] = self.knowledge_encoder(triplet_texts)
      out["swapped_knowledge_embeds"] = self.knowledge_encoder(triplet_texts, swap=True)
    elif self.knowledge and self.is_initializing():  # init sees images and captions only: make its params
      self.knowledge_encoder(jnp.zeros((1, 1, 3, 1), jnp.int32))
    return out


registry.register("model", "dual_encoder")(DualEncoder)
