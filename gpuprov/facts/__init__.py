"""Pure facts about hosts: the probe's output parsed into dataclasses, no I/O at all.

``probe.sh`` (shipped next to these modules) is what runs on the host; the stages send it over
SSH and hand its output to ``parse_host_facts``.
"""

from gpuprov.facts.host import HostFacts, parse_host_facts
from gpuprov.facts.pci import DeviceSelector, Gpu, PciDevice, parse_address

__all__ = ["DeviceSelector", "Gpu", "HostFacts", "PciDevice", "parse_address",
           "parse_host_facts"]
