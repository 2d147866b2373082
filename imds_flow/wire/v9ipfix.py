"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) data sets into flow rows: one kernel call per batch.

The batch's data sets arrive as rows of SET (resolve.py found each one's plan); this kernel cuts
their records in order, one by one (records.py: locate the fields, then emit the row).
Options data sets the sampling rate of its scope (sampler -1) or of its sampler / selector id
(OPTION rows, applied by the caller before the batch's flow records). With an endpoint table,
the batch holds only the rows that may alert: a record whose template has no content field (URL,
HTTP method, packet section) is tested by its addresses before its row is written
(records.may_alert: most records never become a row); the rows of other sets are dropped
while they are still in cache (kernels.compact).
"""
from __future__ import annotations

import numpy as np

from ..jit import kernel
from ..kernels import compact, cover
from .fields import NSLOT
from .records import address_slots, emit, locate, may_alert, next_may_alert, option_rate, option_sampler

__all__ = ["SET", "OPTION", "decode_sets"]

# One data set of a batch. In: where its bytes are (src 0: the batch's buffer, 1: the pending
# buffer; off, len), its plan, exporter, version, arrival time, header times and scope. Out: bad
# (a record overran the set) and nrec (records cut from it). dg and key serve resolve.py.
SET = np.dtype([("src", np.uint8), ("ver", np.uint8), ("bad", np.uint8), ("plan", np.int32), ("exp", np.int32),
                ("uptime", np.uint32), ("off", np.int64), ("len", np.int64), ("ts", np.float64),
                ("secs", np.float64), ("scope", np.int64), ("dg", np.int64), ("key", np.int64),
                ("nrec", np.int64)], align=True)
# One sampling setting from options data.
OPTION = np.dtype([("scope", np.int64), ("sampler", np.int64), ("rate", np.float64)], align=True)


@kernel
def decode_sets(buf, pbuf, sets, plans, rates, http, want_options, c, n, opts, ep, compacting, so, sl):
    """Cut `sets` over their plans (plans.PlanArrays): flow records into rows `c` from n (when
    want_options is False), or the sampling settings of options records into `opts` (when True).
    rates: (keys, rates) of the scopes' sampling; http: the packet kernel's tables (records.emit).
    With `compacting`, each set's rows that cannot alert for the endpoint table `ep` are dropped.
    so / sl: scratch of NSLOT int64 each (a kernel allocates nothing). Returns (new n, options rows
    written)."""
    cap = c.shape[0]
    no = 0
    reclen, minlen, f0, nf, options, slot_off, slot_len = (plans.reclen, plans.minlen, plans.f0, plans.nf,
                                                           plans.options, plans.slot_off, plans.slot_len)
    f_len, f_slot, content = plans.f_len, plans.f_slot, plans.content
    ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4 = ep
    cv = cover(ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4)
    samp_keys, samp_rates = rates
    pat, pat_off = http[0], http[1]
    loaded = -1                                     # the fixed plan so / sl hold (locate overwrites them)
    for i in range(sets.shape[0]):
        s = sets[i]
        p = s.plan
        if p < 0 or options[p] != want_options:
            continue
        b = buf if s.src == 0 else pbuf
        main = s.src == 0
        o = s.off
        end = o + s.len
        L = reclen[p]
        n0 = n
        cnt = 0
        by_address = compacting and not want_options and not content[p]   # may_alert decides
        if L > 0 and p != loaded:                  # so / sl still hold the last set's fixed plan
            for k in range(NSLOT):
                so[k] = slot_off[p, k]
                sl[k] = slot_len[p, k]
            loaded = p
        at = address_slots(so)
        stop = o + (s.len // L) * L if L > 0 else end
        while True:
            if by_address and L > 0:               # a fixed layout: on to its next record that may alert
                q = next_may_alert(b, o, stop, L, at, ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4, cv)
                cnt += (q - o) // L
                o = q
            if L > 0:
                nxt = o + L if end - o >= L else -1
            elif end - o >= minlen[p]:
                loaded = -1
                nxt = locate(b, o, end, f_len, f_slot, f0[p], nf[p], so, sl)
                if nxt < 0:
                    s.bad = 1
            else:
                nxt = -1
            if nxt < 0:
                break
            if want_options:
                rate = option_rate(b, o, so, sl)
                if no < opts.shape[0] and rate > 0.0:
                    opts[no].scope = s.scope
                    opts[no].sampler = option_sampler(b, o, so, sl)
                    opts[no].rate = rate
                    no += 1
            else:
                if n >= cap:
                    break
                if not by_address or L > 0 or may_alert(b, o, address_slots(so), ep_hi, ep_lo, ep_mhi, ep_mlo, ep_v4,
                                                         cv):
                    emit(b, o, so, sl, c, n, s, samp_keys, samp_rates, pat, pat_off, http, main)
                    n += 1
            cnt += 1
            o = nxt
        s.nrec = cnt
        if compacting and not want_options and not by_address:
            n = compact(c, n0, n, ep)
    return n, no
