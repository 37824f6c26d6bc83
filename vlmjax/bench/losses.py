"""Per-device memory of each contrastive loss form's gradient, as the global batch grows.

Each form (CLIP global/local, SigLIP global/ring) is the registered objective built as a config
builds it; jit(value_and_grad) of it with respect to both embeddings is compiled, never run, and its
temporary memory read (`xla.memory`). Two sweeps: a fixed device count (the per-device batch grows
with the global one) and a fixed per-device batch (the device count grows with it).
"""
import os

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax import registry, sharding
from vlmjax.bench import LOSS_DEVICES, report, xla

# (objective, `distributed` form) pairs, as a config would name them.
LOSS_FORMS = (("clip", "global"), ("clip", "local"), ("siglip", "global"), ("siglip", "ring"))


def loss_fn(name: str, distributed: str):
  """The registered objective's loss as a function of (image_embeds, text_embeds, θ, bias), built
  exactly as a config builds it (`objectives.<name>.distributed`)."""
  objective = registry.get("objective", name)(distributed=distributed)

  def loss(image_embeds, text_embeds, logit_scale, logit_bias):
    outputs = {"image_embeds": image_embeds, "text_embeds": text_embeds, "logit_scale": logit_scale,
               "logit_bias": logit_bias}
    return objective(outputs, {})[0]

  return loss


def loss_memory(name: str, distributed: str, batch_size: int, embed_dim: int, devices) -> dict:
  """Compiles jit(value_and_grad) of the loss with respect to both embeddings, sharded over the
  batch on a (data=1, fsdp=len(devices)) mesh; returns its per-device memory (nothing runs)."""
  mesh = sharding.make_mesh(dict(data=1, fsdp=-1, tensor=1), list(devices))
  if batch_size % mesh.size:
    raise ValueError(f"bench: loss batch size {batch_size} is not divisible by {mesh.size} devices")
  step = jax.jit(jax.value_and_grad(loss_fn(name, distributed), argnums=(0, 1)))
  embeds = jax.ShapeDtypeStruct((batch_size, embed_dim), jnp.float32,
                                sharding=NamedSharding(mesh, P(sharding.MESH_AXES[:2])))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  with jax.set_mesh(mesh):
    compiled = step.lower(embeds, embeds, scalar, scalar).compile()
  return xla.memory(compiled)


def bench_losses(batch_sizes=(1024, 2048, 4096), embed_dim: int = 256, num_devices: int = LOSS_DEVICES,
                 forms=LOSS_FORMS) -> dict:
  """Temporary memory per device of each loss form's gradient: on `num_devices` devices at each
  global batch size ('fixed_devices'), and with the per-device batch fixed at
  max(batch_sizes) / num_devices on proportionally fewer devices ('fixed_per_device_batch').
  `forms`: (objective, distributed) pairs."""
  batch_sizes = [int(b) for b in batch_sizes]
  if len(batch_sizes) < 2:
    raise ValueError(f"bench: give at least two loss batch sizes, got {batch_sizes}")
  if len(jax.devices()) < num_devices:
    raise RuntimeError(f"bench: the loss benchmark needs {num_devices} devices, jax sees {len(jax.devices())}; "
                       f"run it as `python -m vlmjax.bench --losses` (which fakes them on a CPU) or set "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before jax starts")
  if any(b2 != 2 * b1 for b1, b2 in zip(batch_sizes, batch_sizes[1:])):
    raise ValueError(f"bench: loss batch sizes must each double the last, got {batch_sizes}")
  per_device = batch_sizes[-1] // num_devices
  device_counts = [b // per_device for b in batch_sizes]
  if any(b % per_device or n < 1 for b, n in zip(batch_sizes, device_counts)):
    raise ValueError(f"bench: batch sizes {batch_sizes} do not split into {per_device} per device on "
                     f"{num_devices} or fewer devices")
  devices = jax.devices()[:num_devices]
  load_start = os.getloadavg()
  results = []
  for name, distributed in forms:
    fixed = [loss_memory(name, distributed, b, embed_dim, devices) for b in batch_sizes]
    weak = [loss_memory(name, distributed, b, embed_dim, devices[:n]) for b, n in zip(batch_sizes, device_counts)]
    temp = lambda runs: [r["temp_size"] for r in runs]
    growth = lambda t: [b / a for a, b in zip(t, t[1:])]
    results.append({"objective": name, "distributed": distributed,
                    "fixed_devices": {"temp_bytes": temp(fixed), "growth_per_doubling": growth(temp(fixed)),
                                      "memory": fixed},
                    "fixed_per_device_batch": {"temp_bytes": temp(weak), "growth_per_doubling": growth(temp(weak)),
                                               "memory": weak}})
  return {"batch_sizes": batch_sizes, "embed_dim": embed_dim, "num_devices": num_devices,
          "per_device_batch": per_device, "device_counts": device_counts, "forms": results,
          "environment": report.environment(devices, load_start)}
