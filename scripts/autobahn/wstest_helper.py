# -*- coding: utf-8 -*-
"""Helper run by the wstest virtualenv's Python 2.7 (it imports autobahntestsuite).

  plan   OUTDIR URL AGENT JOBS --cases PAT,... --exclude PAT,...
         Resolves the case patterns exactly like wstest does, writes OUTDIR/cases.txt
         (one case id per line) and the fuzzingclient spec(s):
           JOBS == 1: OUTDIR/spec.json with the patterns as given;
           JOBS  > 1: OUTDIR/jobs/jK/spec.json, each with an explicit list of case ids
                      (round-robin over the sorted case list, so every job gets a similar
                      share of the expensive 9.*, 12.* and 13.* cases).
         Prints one spec path per line.
  merge  OUTDIR JOBDIR...
         Merges the per-job reports into OUTDIR: copies the per-case files and regenerates
         OUTDIR/index.json and OUTDIR/index.html with wstest's own report code.
"""
from __future__ import print_function

import glob
import json
import os
import shutil
import sys

from autobahntestsuite.fuzzing import (CaseSet, CaseSetname, CaseBasename, Cases,
                                       CaseCategories, CaseSubCategories, FuzzingFactory)


def case_set():
    return CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)


def split_patterns(values):
    out = []
    for v in values:
        out.extend(p.strip() for p in v.split(',') if p.strip())
    return out


def write_spec(path, outdir, url, agent, cases, exclude):
    spec = {
        "outdir": outdir,
        "servers": [{"agent": agent, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
        "options": {"failByDrop": False},
    }
    with open(path, 'w') as f:
        json.dump(spec, f, indent=2, sort_keys=True)
        f.write('\n')


def plan(argv):
    outdir, url, agent, jobs = argv[0], argv[1], argv[2], int(argv[3])
    cases, exclude, key = [], [], None
    for a in argv[4:]:
        if a in ('--cases', '--exclude'):
            key = a
        elif key == '--cases':
            cases.append(a)
        elif key == '--exclude':
            exclude.append(a)
        else:
            raise SystemExit('wstest_helper plan: unexpected argument %r' % a)
    cases = split_patterns(cases) or ['*']
    exclude = split_patterns(exclude)

    cs = case_set()
    # wstest passes ids without '*' through unchecked and then crashes on unknown ones.
    unknown = [p for p in cases + exclude if '*' not in p and p not in cs.CasesIndices]
    if unknown:
        raise SystemExit('unknown Autobahn case id(s): %s' % ', '.join(unknown))
    resolved = cs.parseSpecCases({"cases": cases, "exclude-cases": exclude})
    if not resolved:
        raise SystemExit('the case selection %s minus %s is empty' % (cases, exclude))

    with open(os.path.join(outdir, 'cases.txt'), 'w') as f:
        f.write(''.join(c + '\n' for c in resolved))

    jobs = max(1, min(jobs, len(resolved)))
    if jobs == 1:
        spec = os.path.join(outdir, 'spec.json')
        write_spec(spec, outdir, url, agent, cases, exclude)
        print(spec)
        return
    for k in range(jobs):
        jobdir = os.path.join(outdir, 'jobs', 'j%d' % k)
        if not os.path.isdir(jobdir):
            os.makedirs(jobdir)
        spec = os.path.join(jobdir, 'spec.json')
        write_spec(spec, jobdir, url, agent, resolved[k::jobs], [])
        print(spec)


def merge(argv):
    outdir, jobdirs = argv[0], argv[1:]
    factory = FuzzingFactory(outdir)
    factory.CaseSet = case_set()
    for jobdir in jobdirs:
        index_path = os.path.join(jobdir, 'index.json')
        if not os.path.isfile(index_path):
            print('merge: %s has no index.json (wstest did not finish?)' % jobdir, file=sys.stderr)
            continue
        with open(index_path) as f:
            index = json.load(f)
        for agent, agent_cases in index.items():
            for case_id, entry in agent_cases.items():
                report = os.path.join(jobdir, entry['reportfile'])
                with open(report) as f:
                    case = json.load(f)
                factory.logCase(case)
        for path in glob.glob(os.path.join(jobdir, '*_case_*.*')):
            shutil.copy2(path, outdir)
    # Regenerate the master reports only (per-case files were copied above).
    factory.createMasterReportJSON(outdir)
    factory.createMasterReportHTML(outdir)
    n = sum(len(v) for v in factory.agents.values())
    print('merged %d case result(s) from %d job(s) into %s/index.json' % (n, len(jobdirs), outdir))


if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in ('plan', 'merge'):
        raise SystemExit(__doc__)
    {'plan': plan, 'merge': merge}[sys.argv[1]](sys.argv[2:])
