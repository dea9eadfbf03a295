#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Safe unload relies on the sk_prot wrappers of defer_connect.c entering the
# kernel's (possibly long-blocking) tcp_sendmsg/recvmsg/setsockopt... by a
# sibling call, so no frame of the module stays on a sleeping task's stack.
# C cannot force that (gcc-12 has no musttail), so check the object code:
# each wrapper may only call __fentry__ and its kmesh_before_* helper, and
# must leave through a jump to tcp_sendmsg or an indirect jump.
set -euo pipefail
ko=${1:?usage: check_tailcalls.sh kmesh.ko}
wrappers="kmesh_sendmsg kmesh_recvmsg kmesh_setsockopt kmesh_destroy kmesh_disconnect kmesh_get_port"
dis=$(objdump -d --no-show-raw-insn -r "$ko")
fail=0
for fn in $wrappers; do
	body=$(awk -v fn="$fn" '$0 ~ "^[0-9a-f]+ <"fn">:$" {on=1; next} on && /^$/ {exit} on {print}' <<<"$dis")
	if [ -z "$body" ]; then
		echo "check_tailcalls: $fn not found in $ko"; fail=1; continue
	fi
	# A call's target is on the same line (<sym>) or on the relocation line after it.
	bad=$(awk '
		/\tcall / { pending=$0; if ($0 ~ /<kmesh_before_[a-z_]+>/) pending=""; next }
		pending != "" { if ($0 !~ /R_X86_64_PLT32\t__fentry__/) print pending; pending="" }' <<<"$body")
	if [ -n "$bad" ]; then
		echo "check_tailcalls: $fn makes a call that returns into module code:"; echo "$bad"; fail=1
	fi
	if ! grep -Eq 'R_X86_64_PLT32[[:space:]]+(tcp_sendmsg|__x86_indirect_thunk_[a-z0-9]+)-0x4|jmp[[:space:]]+\*' <<<"$body"; then
		echo "check_tailcalls: $fn does not end in a tail jump"; fail=1
	fi
	if grep -Eq '\tcall .*\*' <<<"$body"; then
		echo "check_tailcalls: $fn makes an indirect call"; fail=1
	fi
done
[ $fail -eq 0 ] && echo "check_tailcalls: $(wc -w <<<"$wrappers") sk_prot wrappers leave by tail jump"
exit $fail
