// Command kubenode runs one upstream Kubernetes node component, chosen by its first argument:
//
//	kubenode kubelet|proxy [flags of that component]
//	kubenode clean-runtime --endpoint unix:///path/containerd.sock [--grace 5s]
//
// The node's two components share one binary and build, apart from the control plane's `kube`; each
// of them is the upstream component's own cobra command, unchanged. clean-runtime stops and removes
// every pod sandbox of a CRI runtime (what `crictl rmp -af` does), so that a node's shutdown ends
// its containers and releases their networks before the runtime stops.
package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	criclient "k8s.io/cri-client/pkg"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	commands := map[string]func() *cobra.Command{
		"kubelet":       func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
		"proxy":         proxy.NewProxyCommand,
		"clean-runtime": cleanRuntimeCommand,
	}
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: kubenode kubelet|proxy|clean-runtime [flags]")
		os.Exit(2)
	}
	command := commands[os.Args[1]]()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}

func cleanRuntimeCommand() *cobra.Command {
	var endpoint string
	var grace time.Duration
	command := &cobra.Command{
		Use:   "clean-runtime",
		Short: "Stop and remove every pod sandbox and container of a CRI runtime",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			runtime, err := criclient.NewRemoteRuntimeServiceBuilder().
				WithEndpoint(endpoint).WithConnectionTimeout(10 * time.Second).Build(ctx)
			if err != nil {
				return fmt.Errorf("connecting to %s: %w", endpoint, err)
			}
			sandboxes, err := runtime.ListPodSandbox(ctx, nil)
			if err != nil {
				return fmt.Errorf("listing pod sandboxes of %s: %w", endpoint, err)
			}
			// Every running container at once (SIGTERM, then SIGKILL after the grace period, as the
			// kubelet stops a container), then each sandbox: its network torn down, its state removed.
			var (
				failed []error
				mu     sync.Mutex
				wg     sync.WaitGroup
			)
			fail := func(err error) {
				mu.Lock()
				defer mu.Unlock()
				failed = append(failed, err)
			}
			containers, err := runtime.ListContainers(ctx, &runtimeapi.ContainerFilter{})
			if err != nil {
				fail(err)
			}
			for _, container := range containers {
				if container.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
					continue
				}
				wg.Add(1)
				go func(id string) {
					defer wg.Done()
					if err := runtime.StopContainer(ctx, id, int64(grace.Seconds())); err != nil {
						fail(err)
					}
				}(container.Id)
			}
			wg.Wait()
			for _, sandbox := range sandboxes {
				if err := runtime.StopPodSandbox(ctx, sandbox.Id); err != nil {
					fail(err)
				}
				if err := runtime.RemovePodSandbox(ctx, sandbox.Id); err != nil {
					fail(err)
				}
			}
			fmt.Printf("removed %d pod sandboxes\n", len(sandboxes)-len(failed))
			if len(failed) > 0 {
				return fmt.Errorf("%d errors, the first: %w", len(failed), failed[0])
			}
			return nil
		},
	}
	command.Flags().StringVar(&endpoint, "endpoint", "", "the CRI runtime's endpoint (unix:///...)")
	command.Flags().DurationVar(&grace, "grace", 5*time.Second, "SIGTERM to SIGKILL for running containers")
	return command
}
