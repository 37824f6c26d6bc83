"""vlmjax: vision-language training in JAX/Flax from one config file."""

__version__ = "0.1.0"
