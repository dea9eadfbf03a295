package main

import (
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/version"
)

type globalFlags struct {
	admin string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "kmeshctl",
		Short:         "Inspect and control the local kmeshd",
		Long:          "kmeshctl talks to the kmeshd admin API (default " + admin.DefaultAddress + ", or $KMESH_ADMIN).",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("KMESH_ADMIN")
	if def == "" {
		def = admin.DefaultAddress
	}
	root.PersistentFlags().StringVar(&g.admin, "admin", def, "admin API address: host:port on loopback, or unix:/path")
	root.AddCommand(newDumpCommand(g), newLogCommand(g), newMonitoringCommand(g), newStatusCommand(g), newVersionCommand(g))
	return root
}

func (g *globalFlags) client() (*admin.Client, error) { return admin.NewClient(g.admin) }

func outputFlag(cmd *cobra.Command, def string) *string {
	var o string
	cmd.Flags().StringVarP(&o, "output", "o", def, "output format: json, yaml or table")
	return &o
}

func checkOutput(o string) error {
	switch o {
	case "json", "yaml", "table":
		return nil
	}
	return fmt.Errorf("unknown output format %q (want json, yaml or table)", o)
}

func newDumpCommand(g *globalFlags) *cobra.Command {
	dump := &cobra.Command{Use: "dump", Short: "Dump kmeshd's applied configuration or its BPF maps"}

	cfg := &cobra.Command{
		Use:   "config",
		Short: "The mesh model kmeshd has applied (services, workloads, L7 routes)",
		Args:  cobra.NoArgs,
	}
	cfgOut := outputFlag(cfg, "table")
	cfg.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*cfgOut); err != nil {
			return err
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		var raw any
		if err := c.Get(cmd.Context(), "/debug/config_dump", &raw); err != nil {
			return err
		}
		if *cfgOut != "table" {
			return writeStructured(cmd.OutOrStdout(), *cfgOut, raw)
		}
		var snap model.Snapshot
		if err := reencode(raw, &snap); err != nil {
			return err
		}
		return writeConfigTables(cmd.OutOrStdout(), &snap)
	}

	bpf := &cobra.Command{
		Use:   "bpf",
		Short: "The decoded contents of the dataplane's BPF maps",
		Args:  cobra.NoArgs,
	}
	bpfOut := outputFlag(bpf, "table")
	var only string
	bpf.Flags().StringVar(&only, "map", "", "only this map")
	bpf.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*bpfOut); err != nil {
			return err
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		var d admin.BPFDump
		if err := c.Get(cmd.Context(), "/debug/bpf", &d); err != nil {
			return err
		}
		if only != "" {
			var keep []admin.MapDump
			var names []string
			for _, m := range d.Maps {
				names = append(names, m.Name)
				if m.Name == only {
					keep = append(keep, m)
				}
			}
			if len(keep) == 0 {
				return fmt.Errorf("no map %q (maps: %s)", only, strings.Join(names, ", "))
			}
			d.Maps = keep
		}
		if *bpfOut != "table" {
			return writeStructured(cmd.OutOrStdout(), *bpfOut, d)
		}
		return writeBPFTables(cmd.OutOrStdout(), &d)
	}
	dump.AddCommand(cfg, bpf)
	return dump
}

func newLogCommand(g *globalFlags) *cobra.Command {
	var sets []string
	cmd := &cobra.Command{
		Use:   "log",
		Short: "Show or set kmeshd's log levels per component",
		Example: "  kmeshctl log\n" +
			"  kmeshctl log --set xds:debug\n" +
			"  kmeshctl log --set '*:info'",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			levels := map[string]string{}
			if len(sets) == 0 {
				err = c.Get(cmd.Context(), "/debug/loggers", &levels)
			} else {
				for _, s := range sets {
					if !strings.Contains(s, ":") {
						return fmt.Errorf("--set %q: want name:level, e.g. xds:debug", s)
					}
				}
				err = c.Post(cmd.Context(), "/debug/loggers", url.Values{"set": sets}, &levels)
			}
			if err != nil {
				return err
			}
			names := make([]string, 0, len(levels))
			for n := range levels {
				names = append(names, n)
			}
			sort.Strings(names)
			t := newTable(cmd.OutOrStdout(), "LOGGER", "LEVEL")
			for _, n := range names {
				t.row(n, levels[n])
			}
			return t.flush()
		},
	}
	cmd.Flags().StringArrayVar(&sets, "set", nil, "name:level to set (repeatable; * names every logger)")
	return cmd
}

func newMonitoringCommand(g *globalFlags) *cobra.Command {
	run := func(enable *bool) func(cmd *cobra.Command, _ []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var st admin.MonitoringState
			if enable == nil {
				err = c.Get(cmd.Context(), "/debug/monitoring", &st)
			} else {
				err = c.Post(cmd.Context(), "/debug/monitoring", url.Values{"enabled": {fmt.Sprint(*enable)}}, &st)
			}
			if err != nil {
				return err
			}
			state := "disabled"
			if st.Enabled {
				state = "enabled"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "monitoring %s\n", state)
			return nil
		}
	}
	on, off := true, false
	cmd := &cobra.Command{
		Use:   "monitoring",
		Short: "Switch connection telemetry (metrics and access log) at runtime",
		Args:  cobra.NoArgs,
		RunE:  run(nil),
	}
	cmd.AddCommand(
		&cobra.Command{Use: "enable", Short: "Turn telemetry on", Args: cobra.NoArgs, RunE: run(&on)},
		&cobra.Command{Use: "disable", Short: "Turn telemetry off", Args: cobra.NoArgs, RunE: run(&off)},
	)
	return cmd
}

func newStatusCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "status", Short: "Is kmeshd running and ready, and how is it configured", Args: cobra.NoArgs}
	out := outputFlag(cmd, "table")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		c, err := g.client()
		if err != nil {
			return err
		}
		var st admin.Status
		if err := c.Get(cmd.Context(), "/debug/status", &st); err != nil {
			return err
		}
		if *out != "table" {
			return writeStructured(cmd.OutOrStdout(), *out, st)
		}
		return writeStatus(cmd.OutOrStdout(), &st)
	}
	return cmd
}

func newVersionCommand(g *globalFlags) *cobra.Command {
	var short bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Versions of kmeshctl and of the running kmeshd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "client: %s\n", version.Get())
			if short {
				return nil
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var v version.Info
			if err := c.Get(cmd.Context(), "/version", &v); err != nil {
				fmt.Fprintf(w, "server: unavailable (%v)\n", err)
				return nil
			}
			fmt.Fprintf(w, "server: %s\n", v)
			return nil
		},
	}
	cmd.Flags().BoolVar(&short, "client", false, "print only the client version")
	return cmd
}
