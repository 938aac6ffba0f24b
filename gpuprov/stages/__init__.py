"""One module per CLI verb: gather facts over the transports, plan with the pure layers, return
data for the CLI to render."""
