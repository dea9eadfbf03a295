// SPDX-License-Identifier: GPL-2.0
/* Counters (read over genetlink) and the safe-mode switch. Counters are
 * per-CPU so the hot paths (a parse, a first send) never share a cache line. */
#include <linux/percpu.h>
#include <linux/compiler.h>

#include "kmesh.h"

struct kmesh_stats {
	u64 v[__KMESH_STAT_MAX];
};

static DEFINE_PER_CPU(struct kmesh_stats, kmesh_stats);
static bool kmesh_safe;

void kmesh_stat_inc(enum kmesh_stat s)
{
	if (s < __KMESH_STAT_MAX)
		this_cpu_inc(kmesh_stats.v[s]);
}

/* A sum over CPUs; concurrent increments may or may not be included. */
u64 kmesh_stat_read(enum kmesh_stat s)
{
	u64 sum = 0;
	int cpu;

	if (s >= __KMESH_STAT_MAX)
		return 0;
	for_each_possible_cpu(cpu)
		sum += READ_ONCE(per_cpu_ptr(&kmesh_stats, cpu)->v[s]);
	return sum;
}

/* Safe mode: bpf_kmesh_defer_connect() refuses new sockets (they stay plain
 * TCP); sockets already deferred finish their first send normally. */
bool kmesh_safe_mode(void)
{
	return READ_ONCE(kmesh_safe);
}

void kmesh_set_safe_mode(bool on)
{
	WRITE_ONCE(kmesh_safe, on);
}
