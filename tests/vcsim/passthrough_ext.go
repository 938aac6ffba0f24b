// gpuprov's passthrough extension of vcsim: what stock vcsim does not model, added in the
// project's own test code. Stock vcsim has no GPU among its PCI devices, a dangling
// configManager.pciPassthruSystem, lists no passthrough devices in QueryConfigTarget and powers on
// any VM. This file adds, per host:
//
//   - two NVIDIA cards: an RTX A6000 at 0000:26:00 (VGA function .0, HD-audio function .1) and a
//     Tesla T4 at 0000:3b:00.0, all passthrough-capable and disabled;
//   - a working HostPciPassthruSystem. Per the vSphere API reference, passthruActive means
//     "enabled + rebooted": UpdatePassthruConfig changes passthruEnabled only, RebootHost_Task
//     (which, unless forced, needs maintenance mode) makes every device's active state follow
//     its enabled state;
//   - QueryConfigTarget listing the active devices as pciPassthrough (static DirectPath, with
//     the host's systemId) and dynamicPassthrough (Dynamic DirectPath);
//   - power-on checks for VMs with PCI passthrough devices: the whole memory reserved (VMware's
//     documentation for adding a PCI device), and each device known, active and not used by
//     another running VM on the host; a dynamic device is assigned (assignedId) at power-on.
//
// The faults it returns (GenericVmConfigFault, HostConfigFault, InvalidState) and their reason
// texts are this extension's choice; tests assert on them, never on real ESXi's wording.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var extensionDevices = []types.HostPciDevice{
	{Id: "0000:26:00.0", ClassId: 0x0300, Bus: 0x26, Slot: 0, Function: 0,
		VendorId: 0x10de, SubVendorId: 0x10de, VendorName: "NVIDIA Corporation",
		DeviceId: 0x2230, SubDeviceId: 0x1459, DeviceName: "GA102GL [RTX A6000]"},
	{Id: "0000:26:00.1", ClassId: 0x0403, Bus: 0x26, Slot: 0, Function: 1,
		VendorId: 0x10de, SubVendorId: 0x10de, VendorName: "NVIDIA Corporation",
		DeviceId: 0x1aef, SubDeviceId: 0x1459, DeviceName: "GA102 High Definition Audio Controller"},
	{Id: "0000:3b:00.0", ClassId: 0x0302, Bus: 0x3b, Slot: 0, Function: 0,
		VendorId: 0x10de, SubVendorId: 0x10de, VendorName: "NVIDIA Corporation",
		DeviceId: 0x1eb8, SubDeviceId: 0x12a2, DeviceName: "TU104GL [Tesla T4]"},
}

// passthruSystem is a host's HostPciPassthruSystem. Its pciPassthruInfo shares its entries with
// the host's config.pciPassthruInfo, so both always read the same.
type passthruSystem struct {
	mo.HostPciPassthruSystem

	host *simulator.HostSystem
}

func (s *passthruSystem) find(id string) *types.HostPciPassthruInfo {
	for _, info := range s.PciPassthruInfo {
		if i := info.GetHostPciPassthruInfo(); i.Id == id {
			return i
		}
	}
	return nil
}

func (s *passthruSystem) UpdatePassthruConfig(ctx *simulator.Context, req *types.UpdatePassthruConfig) soap.HasFault {
	body := &methods.UpdatePassthruConfigBody{}
	// Check every entry first: a refused request changes nothing.
	for _, c := range req.Config {
		config := c.GetHostPciPassthruConfig()
		info := s.find(config.Id)
		if info == nil || !info.PassthruCapable {
			body.Fault_ = simulator.Fault(fmt.Sprintf("device %s is not passthrough-capable", config.Id),
				&types.HostConfigFault{})
			return body
		}
	}
	ctx.Map.WithLock(s.host, func() {
		for _, c := range req.Config {
			config := c.GetHostPciPassthruConfig()
			s.find(config.Id).PassthruEnabled = config.PassthruEnabled
		}
	})
	body.Res = &types.UpdatePassthruConfigResponse{}
	return body
}

func (s *passthruSystem) Refresh(req *types.Refresh) soap.HasFault {
	return &methods.RefreshBody{Res: &types.RefreshResponse{}}
}

var systems = map[types.ManagedObjectReference]*passthruSystem{} // host -> its system

func installPassthroughExtension() {
	for _, entity := range simulator.Map.All("HostSystem") {
		host := entity.(*simulator.HostSystem)
		// The model's hosts share the template's device slice: give each its own.
		devices := append([]types.HostPciDevice{}, host.Hardware.PciDevice...)
		devices = append(devices, extensionDevices...)
		host.Hardware.PciDevice = devices

		system := &passthruSystem{host: host}
		system.Self = types.ManagedObjectReference{Type: "HostPciPassthruSystem"}
		for _, device := range devices {
			capable := false
			for _, gpu := range extensionDevices {
				capable = capable || gpu.Id == device.Id
			}
			system.PciPassthruInfo = append(system.PciPassthruInfo, &types.HostPciPassthruInfo{
				Id: device.Id, DependentDevice: device.Id, PassthruCapable: capable,
			})
		}
		ref := simulator.Map.Put(system).Reference()
		host.ConfigManager.PciPassthruSystem = &ref
		host.Config.PciPassthruInfo = system.PciPassthruInfo
		systems[host.Self] = system
	}
}

// The simulator dispatches a SOAP call to the object its _this names, and hosts and VMs cannot
// be wrapped (the simulator type-asserts them). So calls to the methods below are sent to an
// interceptor registered under a derived reference, which checks, then calls the stock method.
var intercepted = regexp.MustCompile(`<(?:\w+:)?(PowerOnVM_Task|RebootHost_Task|QueryConfigTarget)\b`)
var thisRef = regexp.MustCompile(`(<(?:\w+:)?_this\b[^>]*>)([^<]+)(</)`)

const interceptPrefix = "gpuprov-ext-"

// Not an entity: Map.All("VirtualMachine") and the inventory must never list an interceptor.
type interceptor struct {
	Self   types.ManagedObjectReference
	target types.ManagedObjectReference
}

func (i *interceptor) Reference() types.ManagedObjectReference { return i.Self }

func interceptMethods(service *simulator.Service, hostname string) {
	// A host-specific pattern takes precedence over the stock "/sdk" one.
	service.ServeMux.HandleFunc(hostname+"/sdk", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if intercepted.Match(body) {
			body = thisRef.ReplaceAllFunc(body, func(m []byte) []byte {
				parts := thisRef.FindSubmatch(m)
				value := string(parts[2])
				typeName := "HostSystem"
				if bytes.Contains(m, []byte(`"VirtualMachine"`)) {
					typeName = "VirtualMachine"
				} else if bytes.Contains(m, []byte(`"EnvironmentBrowser"`)) {
					typeName = "EnvironmentBrowser"
				}
				target := types.ManagedObjectReference{Type: typeName, Value: value}
				derived := types.ManagedObjectReference{Type: typeName, Value: interceptPrefix + value}
				if simulator.Map.Get(derived) == nil {
					i := &interceptor{target: target}
					i.Self = derived
					simulator.Map.Put(i)
				}
				return []byte(string(parts[1]) + derived.Value + string(parts[3]))
			})
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		service.ServeSDK(w, r)
	})
}

func failedTask(obj mo.Reference, name string, fault types.BaseMethodFault) types.ManagedObjectReference {
	return simulator.CreateTask(obj, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	}).Run()
}

func (i *interceptor) RebootHostTask(ctx *simulator.Context, req *types.RebootHost_Task) soap.HasFault {
	host := ctx.Map.Get(i.target).(*simulator.HostSystem)
	task := simulator.CreateTask(host, "rebootHost", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		var fault types.BaseMethodFault
		ctx.Map.WithLock(host, func() {
			if !host.Runtime.InMaintenanceMode && !req.Force {
				fault = &types.InvalidState{}
				return
			}
			for _, info := range systems[host.Self].PciPassthruInfo {
				i := info.GetHostPciPassthruInfo()
				i.PassthruActive = i.PassthruEnabled
			}
			now := time.Now()
			host.Runtime.BootTime = &now
		})
		return nil, fault
	})
	return &methods.RebootHost_TaskBody{Res: &types.RebootHost_TaskResponse{Returnval: task.Run()}}
}

// hostsOf: the hosts an environment browser answers for (req.Host, or all of its compute resource).
func hostsOf(browser types.ManagedObjectReference, req *types.QueryConfigTarget) []*simulator.HostSystem {
	var hosts []*simulator.HostSystem
	for _, entity := range simulator.Map.All("HostSystem") {
		host := entity.(*simulator.HostSystem)
		if req.Host != nil {
			if host.Self == *req.Host {
				hosts = append(hosts, host)
			}
			continue
		}
		var cr *mo.ComputeResource
		switch parent := simulator.Map.Get(*host.Parent).(type) {
		case *mo.ComputeResource:
			cr = parent
		case *simulator.ClusterComputeResource:
			cr = &parent.ComputeResource
		}
		if cr != nil && cr.EnvironmentBrowser != nil && *cr.EnvironmentBrowser == browser {
			hosts = append(hosts, host)
		}
	}
	return hosts
}

func (i *interceptor) QueryConfigTarget(ctx *simulator.Context, req *types.QueryConfigTarget) soap.HasFault {
	browser := ctx.Map.Get(i.target).(*simulator.EnvironmentBrowser)
	stock := *req
	stock.This = i.target
	var res soap.HasFault
	ctx.Map.WithLock(browser, func() { res = browser.QueryConfigTarget(ctx, &stock) })
	body := res.(*methods.QueryConfigTargetBody)
	if body.Res == nil {
		return res
	}
	target := body.Res.Returnval
	for _, host := range hostsOf(i.target, req) {
		for _, device := range host.Hardware.PciDevice {
			info := systems[host.Self].find(device.Id)
			if info == nil || !info.PassthruActive {
				continue
			}
			target.PciPassthrough = append(target.PciPassthrough, &types.VirtualMachinePciPassthroughInfo{
				VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: device.DeviceName},
				PciDevice:                device,
				SystemId:                 host.Hardware.SystemInfo.Uuid,
			})
			target.DynamicPassthrough = append(target.DynamicPassthrough, types.VirtualMachineDynamicPassthroughInfo{
				VirtualMachineTargetInfo: types.VirtualMachineTargetInfo{Name: device.DeviceName},
				VendorName:               device.VendorName,
				DeviceName:               device.DeviceName,
				VendorId:                 int32(device.VendorId) & 0xffff,
				DeviceId:                 int32(device.DeviceId) & 0xffff,
			})
		}
	}
	return body
}

func passthroughDevices(vm *simulator.VirtualMachine) []*types.VirtualPCIPassthrough {
	var found []*types.VirtualPCIPassthrough
	for _, device := range vm.Config.Hardware.Device {
		if p, ok := device.(*types.VirtualPCIPassthrough); ok {
			found = append(found, p)
		}
	}
	return found
}

// inUse: device id -> name of the running VM on host that holds it.
func inUse(host *simulator.HostSystem, except types.ManagedObjectReference) map[string]string {
	used := map[string]string{}
	for _, ref := range host.Vm {
		other, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
		if !ok || ref == except || other.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
			continue
		}
		for _, device := range passthroughDevices(other) {
			switch b := device.Backing.(type) {
			case *types.VirtualPCIPassthroughDeviceBackingInfo:
				used[b.Id] = other.Name
			case *types.VirtualPCIPassthroughDynamicBackingInfo:
				used[b.AssignedId] = other.Name
			}
		}
	}
	return used
}

func vmFault(format string, args ...interface{}) types.BaseMethodFault {
	return &types.GenericVmConfigFault{Reason: fmt.Sprintf(format, args...)}
}

// powerOnCheck returns the fault that refuses the power-on, or the dynamic assignments to make.
func powerOnCheck(vm *simulator.VirtualMachine) (map[*types.VirtualPCIPassthroughDynamicBackingInfo]string, types.BaseMethodFault) {
	devices := passthroughDevices(vm)
	assign := map[*types.VirtualPCIPassthroughDynamicBackingInfo]string{}
	if len(devices) == 0 {
		return assign, nil
	}
	memory := int64(vm.Config.Hardware.MemoryMB)
	reserved := vm.Config.MemoryAllocation != nil && vm.Config.MemoryAllocation.Reservation != nil &&
		*vm.Config.MemoryAllocation.Reservation >= memory
	if !reserved && (vm.Config.MemoryReservationLockedToMax == nil || !*vm.Config.MemoryReservationLockedToMax) {
		return nil, vmFault("memory reservation is short of the VM's %d MB: a VM with PCI passthrough devices needs all of its memory reserved", memory)
	}
	host := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem)
	system := systems[host.Self]
	used := inUse(host, vm.Self)
	for _, device := range devices {
		switch b := device.Backing.(type) {
		case *types.VirtualPCIPassthroughDeviceBackingInfo:
			info := system.find(b.Id)
			switch {
			case info == nil:
				return nil, vmFault("PCI device %s is unknown on host %s", b.Id, host.Name)
			case !info.PassthruActive:
				return nil, vmFault("PCI device %s is not active for passthrough on host %s", b.Id, host.Name)
			case used[b.Id] != "":
				return nil, vmFault("PCI device %s is in use by VM %s", b.Id, used[b.Id])
			}
			used[b.Id] = vm.Name
		case *types.VirtualPCIPassthroughDynamicBackingInfo:
			id := ""
			for _, pci := range host.Hardware.PciDevice {
				info := system.find(pci.Id)
				if info == nil || !info.PassthruActive || used[pci.Id] != "" {
					continue
				}
				for _, allowed := range b.AllowedDevice {
					if allowed.VendorId&0xffff == int32(pci.VendorId)&0xffff &&
						allowed.DeviceId&0xffff == int32(pci.DeviceId)&0xffff && id == "" {
						id = pci.Id
					}
				}
			}
			if id == "" {
				return nil, vmFault("no active, unused PCI device on host %s matches the VM's dynamic passthrough device", host.Name)
			}
			used[id] = vm.Name
			assign[b] = id
		default:
			return nil, vmFault("unsupported PCI passthrough backing %T", device.Backing)
		}
	}
	return assign, nil
}

func (i *interceptor) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	vm := ctx.Map.Get(i.target).(*simulator.VirtualMachine)
	var assign map[*types.VirtualPCIPassthroughDynamicBackingInfo]string
	var fault types.BaseMethodFault
	ctx.Map.WithLock(vm, func() { assign, fault = powerOnCheck(vm) })
	if fault != nil {
		return &methods.PowerOnVM_TaskBody{Res: &types.PowerOnVM_TaskResponse{
			Returnval: failedTask(vm, "powerOn", fault)}}
	}
	stock := *req
	stock.This = i.target
	var res soap.HasFault
	ctx.Map.WithLock(vm, func() {
		res = vm.PowerOnVMTask(ctx, &stock)
		for backing, id := range assign {
			backing.AssignedId = id
		}
	})
	return res
}
