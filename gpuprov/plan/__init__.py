"""Pure decisions: (facts, what is asked) -> verdicts, changes or refusals. No I/O at all."""

from gpuprov.plan.host_setup import SetupPlan, SetupRefused, choose_gpus, plan_setup, unmet
from gpuprov.plan.kernel import KernelParams, kernel_params
from gpuprov.plan.verdict import (
    NEEDS_SETUP,
    READY,
    UNSAFE,
    GpuVerdict,
    Refusal,
    gpu_verdict,
    gpu_verdicts,
    inspect_exit_code,
    select_gpus,
)

__all__ = ["NEEDS_SETUP", "READY", "UNSAFE", "GpuVerdict", "KernelParams", "Refusal",
           "SetupPlan", "SetupRefused", "choose_gpus", "gpu_verdict", "gpu_verdicts",
           "inspect_exit_code", "kernel_params", "plan_setup", "select_gpus", "unmet"]
