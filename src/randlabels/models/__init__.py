"""The networks: the built-in architectures a spec may name, and building and
initializing a network from a spec."""
