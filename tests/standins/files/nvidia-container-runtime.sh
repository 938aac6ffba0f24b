#!/bin/sh
# STAND-IN for NVIDIA's nvidia-container-runtime @VERSION@ (gpuprov tests). The real one is a
# shim that adds the GPUs a container asks for (NVIDIA_VISIBLE_DEVICES, CDI) to its OCI spec and
# hands everything to runc; with no GPU asked for it changes nothing. This one never adds any.
exec runc "$@"
