"""Paired: the session-25 screen students alone (validation, read after the choice) vs kd / retrikt on the same stores."""
import json
from retrikt.eval.paired import compare_rows
R = "benchmarks/results"
recs = []
def add(path, method, tag, seed):
    d = json.load(open(path)); recs.append({**d, "method": method, "tag": tag, "seed": seed, "task": "sst2"})
for s in (1, 2, 3):
    add(f"{R}/sst2-stores-s23/sst2-s{s}/kd/sst2__kd__minilm-l6__seed{s}.json", "kd", "", s)
    add(f"{R}/sst2-stores-s23/sst2-s{s}/kd-prior/sst2__kd__minilm-l6__seed{s}.json", "kd", "prior", s)
    add(f"{R}/sst2-stores-s23/sst2-s{s}/retrikt/sst2__retrikt__minilm-l6__seed{s}.json", "retrikt", "", s)
    for v, tag in (("v5", "ka30-alone"), ("v3", "ka10-alone")):
        add(f"{R}/sst2-screen-s25/{v}/sst2__retrikt__minilm-l6__seed{s}.validation.json", "retrikt", tag, s)
for a, b in (("retrikt-ka30-alone", "kd"), ("retrikt-ka30-alone", "kd-prior"), ("retrikt-ka30-alone", "retrikt"),
             ("retrikt-ka10-alone", "kd")):
    r = compare_rows(recs, a, b, "sst2")
    print(f"| {a} − {b} | {r['delta']*100:+.1f} | " + " / ".join(f"{100*x:+.1f}" for x in r["delta_per_seed"])
          + f" | {r['a_only_right']} / {r['b_only_right']} | {r['mcnemar_p']:.3f} | [{100*r['ci95'][0]:+.1f}, {100*r['ci95'][1]:+.1f}] |")
