"""Models: nnx architectures with named-layer capture, safe weight porting, built-in zoo."""
from repsim_jax.models.capture import activations, forward, layer_shapes, list_layers, tap

__all__ = ["activations", "forward", "layer_shapes", "list_layers", "tap"]
