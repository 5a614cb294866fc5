// Writes the UserNamespace engine tier's seccomp profile (README: "Isolation tiers"):
// containerd's own default profile for the engine container's capabilities, with pivot_root
// allowed and the kernel keyring calls answered ENOSYS.
//
//	go run generate.go CAP_... > user-namespace-engine.json   (generate.sh does this)
package main

import (
	"encoding/json"
	"os"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func main() {
	caps := &specs.LinuxCapabilities{Bounding: os.Args[1:]}
	profile := seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: caps}})
	// runc joins a new session keyring for every container and gives up on EPERM (what the
	// default profile answers) but not on ENOSYS: the keyring stays closed and runc goes on.
	// runc moves each container into its root filesystem with pivot_root, which the default
	// never allows (a container has no need to; a container engine has).
	profile.Syscalls = append(profile.Syscalls, specs.LinuxSyscall{
		Names:  []string{"pivot_root"},
		Action: specs.ActAllow,
	})
	nosys := uint(unix.ENOSYS)
	profile.Syscalls = append(profile.Syscalls, specs.LinuxSyscall{
		Names:    []string{"add_key", "keyctl", "request_key"},
		Action:   specs.ActErrno,
		ErrnoRet: &nosys,
	})
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", " ")
	if err := out.Encode(profile); err != nil {
		panic(err)
	}
}
