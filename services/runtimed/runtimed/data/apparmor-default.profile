# crib's AppArmor profile for containers that ask for RuntimeDefault, rendered by
# runtimed/oci/apparmor.py (${name} is the profile name, runtimed.apparmor_profile) and
# loaded with apparmor_parser when the kernel does not hold it yet.
#
# It lets the workload do what a container normally does (files, network, the
# capabilities the runtime granted) and closes what reaches past the container: writes
# to kernel tunables and to sysfs, the kernel memory and trigger files of /proc, mounts,
# and ptrace or signals aimed at processes under another profile. Self-contained on
# purpose: no #include, so it parses the same on every AppArmor host.

@{crib_proc}=/proc

profile ${name} flags=(attach_disconnected,mediate_deleted) {
  # What the workload needs; the runtime already cut the capability set.
  file,
  network,
  capability,
  umount,

  # Signals: from the runtime and the kubelet (unconfined), and among the
  # container's own processes.
  signal (receive) peer=unconfined,
  signal (send,receive) peer=${name},

  # Debugging within the container only: no profile above lets a process trace or
  # read one under another profile (the host's, another runtime's).
  ptrace (trace,read,tracedby,readby) peer=${name},

  # No file system is mounted, moved or made the root from inside.
  deny mount,
  deny remount,
  deny pivot_root,

  # Kernel tunables are host-wide for the most part; the kubelet's namespaced
  # sysctls are written by the runtime before this profile applies.
  deny @{crib_proc}/sys/** wkl,
  # Files directly under /proc are the kernel's (sysrq-trigger, kmsg, ...); a
  # process's own files sit one level down, in /proc/<pid>/, and stay writable.
  deny @{crib_proc}/* wkl,
  deny @{crib_proc}/{acpi,asound,bus,driver,fs,irq,scsi,tty}/** wkl,
  deny @{crib_proc}/{kcore,kmem,mem,kallsyms,sysrq-trigger} rwklx,

  # sysfs is the host's devices and kernel objects: read-only, and its firmware and
  # security trees not even readable.
  deny /sys/** wkl,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/kernel/debug/** rwklx,
}
