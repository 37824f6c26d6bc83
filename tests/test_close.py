"""CLOSE: a decoder trained on text alone from a frozen dual encoder's embedding, evaluated on images."""
import json
import os

import jax
import numpy as np

from conftest import tiny_config
from vlmjax import batch_spec
from vlmjax.run import RunDir
from vlmjax.train import train

MESH = dict(data=2, fsdp=4, tensor=1)
DECODER = dict(variant="mu", width=32, depth=1, mlp_dim=64, num_heads=4, num_kv_heads=2)


def test_close_trains_on_text_embeddings_and_captions_from_images(tiny_data_dir, tmp_path):
  clip_dir, close_dir = str(tmp_path / "clip"), str(tmp_path / "close")
  train(tiny_config(tiny_data_dir, total_steps=2, mesh=MESH), clip_dir)
  clip = RunDir(clip_dir).load()
  config = tiny_config(tiny_data_dir, total_steps=3, mesh=MESH, **{
      "model": dict(name="close", image=clip.config.model.image.to_dict(), text=clip.config.model.text.to_dict(),
                    embed_dim=clip.config.model.embed_dim, decoder=DECODER, prefix_tokens=3, noise_std=0.2),
      "objectives": {"ntp": {"weight": 1.0}}, "optimizer.frozen": "^(image|text|logit)"})
  config.init.workdir, config.init.params = clip_dir, "^(image|text)"
  config.evals = dict(caption=dict(type="captioning", split="test", num_examples=8, max_new_tokens=6))
  train(config, close_dir)
  close = RunDir(close_dir).load()
  for name in ("image", "text", "image_proj", "text_proj"):  # the dual encoder stays as loaded
    jax.tree.map(np.testing.assert_array_equal, close.params[name], clip.params[name])
  assert "caption/CIDEr" in json.load(open(os.path.join(close_dir, "eval_results.json")))

  model, params = close.model, close.params
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
  texts = batch_spec.random_texts(rng, (64,), 16, 128)
  sequences = [batch_spec.caption_sequence(t, 3) for t in texts]
  tokens = np.stack([s["tokens"] for s in sequences])
  kinds = np.stack([s["attention_mask"] for s in sequences])
  embeds = clip.model.apply({"params": clip.params}, images=images, texts=texts)
  apply = lambda train, imgs, key=0: model.apply({"params": params}, images=imgs, texts=texts, tokens=tokens,
                                                 attention_mask=kinds, train=train,
                                                 rngs={"dropout": jax.random.PRNGKey(key)})
  # Training reads the caption's embedding, with noise of std σ per dimension, and never the image.
  noisy = apply(True, images)
  noise = np.asarray(noisy["prefix_code"]) - np.asarray(embeds["text_embeds"])
  assert abs(noise.std() - 0.2) < 0.01 and abs(noise.mean()) < 0.01
  np.testing.assert_array_equal(apply(True, np.zeros_like(images))["logits"], noisy["logits"])
  # Evaluation reads the image's embedding.
  np.testing.assert_allclose(apply(False, images)["prefix_code"], embeds["image_embeds"], atol=1e-6)


def test_dptr_perturbs_with_another_image_and_image_training_reads_the_image(tiny_data_dir):
  from vlmjax.models.close import Close
  from vlmjax.models.dual_encoder import DualEncoder
  config = tiny_config(tiny_data_dir)
  towers = dict(image=config.model.image.to_dict(), text=config.model.text.to_dict(), embed_dim=32, vocab_size=128)
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  texts = batch_spec.random_texts(rng, (4,), 16, 128)
  tokens = np.stack([batch_spec.caption_sequence(t, 2)["tokens"] for t in texts])
  model = Close(**towers, decoder=DECODER, prefix_tokens=2, image_perturbation=0.3)
  params = model.init(jax.random.PRNGKey(0), images=images, texts=texts, tokens=tokens)["params"]
  embeds = DualEncoder(**towers).apply({"params": {k: v for k, v in params.items() if k not in ("prefix", "decoder")}},
                                       images=images, texts=texts)
  code = lambda m: m.apply({"params": params}, images=images, texts=texts, tokens=tokens, train=True,
                           rngs={"dropout": jax.random.PRNGKey(0)})["prefix_code"]
  expected = np.asarray(embeds["text_embeds"]) + 0.3 * np.roll(np.asarray(embeds["image_embeds"]), 1, axis=0)
  np.testing.assert_allclose(code(model), expected, atol=1e-6)
  np.testing.assert_allclose(code(model.clone(train_code="image")), embeds["image_embeds"], atol=1e-6)
