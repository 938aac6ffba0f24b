// SPDX-License-Identifier: GPL-2.0
/*
 * STAND-IN for NVIDIA's kernel module in gpuprov's tests: a module that does nothing but load,
 * so that the nvidia_driver role's DKMS compile path runs for real inside a lab host.
 */
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("gpuprov STAND-IN DKMS module (tests only)");
MODULE_VERSION("1.0");
