"""A Proxmox VE API simulator for tests: real HTTPS, every request checked against the official
API schema (apidata.json), behaviour and error texts taken from Proxmox's source. See README.md.
"""

from tests.pvesim.server import PveSimulator

__all__ = ["PveSimulator"]
