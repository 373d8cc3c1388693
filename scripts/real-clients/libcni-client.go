// weft-libcni-client: a minimal CNI runtime built on libcni (Debian's golang-github-appc-cni-dev), so a client
// nobody on the Weft team wrote parses Weft's results, caches them and replays them to CHECK and DEL exactly
// as container runtimes do. Debian does not package cnitool; this is our own small main over libcni's public API.
//
//	weft-libcni-client add|check|del|validate CONFLIST_FILE CONTAINER_ID NETNS_PATH [IFNAME]
//
// Environment: CNI_PATH (plugin dirs), CNI_CACHE_DIR (result cache), CAP_ARGS (JSON capability args, e.g.
// {"portMappings":[...]}), CNI_ARGS_K8S (extra CNI_ARGS pairs "K=V;K=V").
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) < 5 && !(len(os.Args) == 3 && os.Args[1] == "validate") {
		fmt.Fprintln(os.Stderr, "usage: weft-libcni-client add|check|del CONFLIST CONTAINER_ID NETNS [IFNAME] | validate CONFLIST")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(os.Args[2])
	fail(err)
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	if os.Args[1] == "validate" {
		caps, err := cni.ValidateNetworkList(ctx, list)
		fail(err)
		fmt.Printf("{\"valid\":true,\"capabilities\":%q}\n", caps)
		return
	}
	rt := &libcni.RuntimeConf{ContainerID: os.Args[3], NetNS: os.Args[4], IfName: "eth0"}
	if len(os.Args) > 5 {
		rt.IfName = os.Args[5]
	}
	if extra := os.Getenv("CNI_ARGS_K8S"); extra != "" {
		for _, kv := range strings.Split(extra, ";") {
			if p := strings.SplitN(kv, "=", 2); len(p) == 2 {
				rt.Args = append(rt.Args, [2]string{p[0], p[1]})
			}
		}
	}
	if caps := os.Getenv("CAP_ARGS"); caps != "" {
		fail(json.Unmarshal([]byte(caps), &rt.CapabilityArgs))
	}
	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		fail(err)
		fail(result.Print())
	case "check":
		fail(cni.CheckNetworkList(ctx, list, rt))
		fmt.Println("{\"check\":\"ok\"}")
	case "del":
		fail(cni.DelNetworkList(ctx, list, rt))
		fmt.Println("{\"del\":\"ok\"}")
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
