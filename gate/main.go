// Command remote-docker-gate starts a BuildJob's command once the job's Docker engine answers.
//
// A job pod whose command is known runs it behind this gate, in the job container itself: an
// init container copies the gate into a volume the job container shares (`install DIR`), and
// the job container's command becomes `DIR/remote-docker-gate [flags] -- COMMAND [ARG...]`.
// Waiting in an init container instead costs a kubelet relist (about a second) after it ends,
// and the wait cannot end before the pod's address is published and its NetworkPolicy
// programmed, which is itself a relist after the pod starts.
//
// The gate makes a mutual-TLS call to the engine (DOCKER_HOST, DOCKER_CERT_PATH) until one
// succeeds, meanwhile proving that destinations the policies deny do not answer (-probe, or the
// API server with -probe-api), then executes the command in its place. It gives up with a
// message starting "remote-docker-gate: " in the container's termination log and exit code
// 1 (the engine never answered) or 3 (a denied destination answered).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	name         = "remote-docker-gate"
	mark         = name + ": "
	exitNoEngine = 1
	exitReached  = 3
	exitExec     = 127
	// A dropped packet is only told from an answer by this; every job waits it out once when
	// its policies drop rather than reject.
	probeCall = time.Second
)

type targets []string

var terminationLog string

func (t *targets) String() string     { return strings.Join(*t, ",") }
func (t *targets) Set(v string) error { *t = append(*t, v); return nil }

func main() {
	if len(os.Args) == 3 && os.Args[1] == "install" {
		if err := install(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, mark+err.Error())
			os.Exit(1)
		}
		return
	}
	flags := flag.NewFlagSet(name, flag.ExitOnError)
	timeout := flags.Duration("timeout", 10*time.Minute, "how long the engine may take to answer")
	grace := flags.Duration("grace", 10*time.Second,
		"how long denied destinations may go on answering once the engine has")
	var probes targets
	flags.Var(&probes, "probe", "host:port the policies deny (repeated)")
	probeAPI := flags.Bool("probe-api", false, "probe the API server's kubernetes Service too")
	flags.StringVar(&terminationLog, "termination-log", "/dev/termination-log",
		"where the reason the gate gave up is written (the kubelet's termination message)")
	_ = flags.Parse(os.Args[1:])
	command := flags.Args()
	if len(command) == 0 {
		give(exitExec, "no command to run")
	}
	if *probeAPI {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		probes = append(probes, net.JoinHostPort(host, port))
	}
	var unreachable atomic.Bool
	go func() {
		for _, target := range probes {
			for reachable(target) {
				time.Sleep(200 * time.Millisecond)
			}
		}
		unreachable.Store(true)
	}()
	if err := waitForEngine(*timeout); err != nil {
		give(exitNoEngine, fmt.Sprintf("engine %s unreachable over mutual TLS: %v",
			os.Getenv("DOCKER_HOST"), err))
	}
	if len(probes) > 0 {
		deadline := time.Now().Add(*grace)
		for !unreachable.Load() {
			if time.Now().After(deadline) {
				give(exitReached, fmt.Sprintf("NetworkPolicy is not enforced: %s, which the "+
					"policies deny, answered from the job pod", probes.String()))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	run(command)
}

// install copies this executable into dir, for a container that shares the volume.
func install(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// reachable: whether a TCP connection to target is accepted (what answers at all, TLS or not).
func reachable(target string) bool {
	conn, err := net.DialTimeout("tcp", target, probeCall)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func engineClient() (*http.Client, string, error) {
	host, err := url.Parse(os.Getenv("DOCKER_HOST"))
	if err != nil || host.Scheme != "tcp" || host.Host == "" {
		return nil, "", fmt.Errorf("DOCKER_HOST %q is not tcp://host:port", os.Getenv("DOCKER_HOST"))
	}
	dir := os.Getenv("DOCKER_CERT_PATH")
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, "", err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, "", errors.New("no certificate in ca.pem")
	}
	transport := &http.Transport{
		TLSClientConfig:   &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool},
		DisableKeepAlives: true,
	}
	client := &http.Client{Transport: transport, Timeout: 2 * time.Second}
	return client, "https://" + host.Host + "/_ping", nil
}

// waitForEngine: until GET /_ping answers 200 over mutual TLS, trying every 0.1 s for the
// first five seconds (a warm engine answers as soon as this pod's policy is in place) and
// every 0.5 s after.
func waitForEngine(timeout time.Duration) error {
	client, ping, err := engineClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	last := errors.New("no answer")
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ping, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /_ping: %s", resp.Status)
		}
		if ctx.Err() != nil {
			return last
		}
		last = err
		delay := 100 * time.Millisecond
		if time.Since(start) > 5*time.Second {
			delay = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(delay):
		}
	}
}

// run replaces the gate with the command, as the container's own process would have been.
func run(command []string) {
	path, err := exec.LookPath(command[0])
	if err != nil {
		// Not the gate's failure: the job's own command, reported as the job's.
		fmt.Fprintf(os.Stderr, "%s\n", err)
		os.Exit(exitExec)
	}
	err = syscall.Exec(path, command, os.Environ())
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", path, err)
	os.Exit(exitExec)
}

// give ends the gate: its reason in the termination log (the BuildJob's message) and on stderr.
func give(code int, reason string) {
	message := mark + reason
	_ = os.WriteFile(terminationLog, []byte(message), 0o644)
	fmt.Fprintln(os.Stderr, message)
	os.Exit(code)
}
