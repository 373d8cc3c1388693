#!/usr/bin/env python3
"""Sums the outcome counters of every TRX file under a directory and prints the CI summary line.
Exit status 1 if any test failed or no results were found."""
import sys, pathlib, xml.etree.ElementTree as ET

ns = {"t": "http://microsoft.com/schemas/VisualStudio/TeamTest/2010"}
passed = failed = skipped = 0
failures = []
files = list(pathlib.Path(sys.argv[1]).rglob("*.trx")) if len(sys.argv) > 1 else []
for f in files:
    for r in ET.parse(f).getroot().iterfind(".//t:UnitTestResult", ns):
        outcome = r.get("outcome")
        if outcome == "Passed":
            passed += 1
        elif outcome == "NotExecuted":
            skipped += 1
        else:
            failed += 1
            message = r.find(".//t:ErrorInfo/t:Message", ns)
            text = (message.text or "").strip().splitlines() if message is not None else []
            failures.append((r.get("testName"), text[:6]))
if not files:
    failed += 1
# The failures again, just above the summary, so a log's tail names them.
for name, text in failures:
    print(f"FAILED {name}")
    for t in text:
        print(f"    {t[:300]}")
line = f"tests: {passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)
sys.exit(1 if failed else 0)
