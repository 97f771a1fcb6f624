"""Issue 17 targets on the demo's own drafts, against the Docs/Drive stand-in (tests/fakes/google_server.py).

    python bench/docs_review.py

Runs `run.py demo` into a temporary workspace, takes its drafts (flagging every
third claim: the offline checker flags none of the sample's claims, so the
texts and positions are real, the verdicts are planted), and publishes them to
the stand-in, which validates every request against the discovery documents
shipped with google-api-python-client. Every document write loses its first
answer (Google applied it, the 503 came back). Then: two republishes with a new
headline, one with every body paragraph changed (so comments must move), and a
sync after approving a third of the documents each by chip, folder and title
prefix. Prints, after each step: flagged claims whose text is in the article,
how many have exactly one open comment covering exactly that text, duplicate
open comments, rejected requests; then the approvals and what recorded them.
"""

import collections
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from google.auth.credentials import CredentialsWithRegionalAccessBoundary  # noqa: E402
from sqlalchemy import insert, select, update  # noqa: E402
from tenacity import wait_none  # noqa: E402

import agents.publisher as P  # noqa: E402
from agents.publisher import build_services, load_credentials, publish_ready, sync_approvals  # noqa: E402
from pipeline.core import schema  # noqa: E402
from pipeline.core.ledger import Ledger  # noqa: E402
from pipeline.core.models import FactCheckReport  # noqa: E402
from pipeline.services.gdocs import clean_text  # noqa: E402
from tests.fakes.google_server import FakeGoogle, write_service_account  # noqa: E402
from tests.test_publisher import APPROVED, FOLDER, google_config  # noqa: E402

# google-auth looks up a service account's access boundary at Google after each token; there is no Google here.
CredentialsWithRegionalAccessBoundary._is_regional_access_boundary_lookup_required = lambda self: False

tmp = Path(tempfile.mkdtemp(prefix="docs-review-"))
demo = tmp / "demo"
subprocess.run([sys.executable, str(ROOT / "run.py"), "demo", "--workspace", str(demo)], check=True,
               stdout=subprocess.DEVNULL)

source = Ledger(f"sqlite:///{demo / 'data' / 'ledger.sqlite'}")
with source.engine.connect() as c:
    drafts = [r._asdict() for r in c.execute(select(schema.drafts)).all()]
fake = FakeGoogle().serve(); fake.add_folder(FOLDER); fake.add_folder(APPROVED)
config = google_config(tmp, fake, credentials_file=write_service_account(fake, tmp / "sa.json"))
ledger = Ledger(f"sqlite:///{tmp/'l.sqlite'}")
# The offline checker flags nothing in the demo drafts: flag every third claim (real claim text, real positions).
for d in drafts:
    if d["factcheck"]:
        for i, v in enumerate(d["factcheck"]["verdicts"]):
            if i % 3 == 1:
                v["verdict"] = "unverifiable" if i % 2 else "contradicted"
with ledger.begin() as c:
    for d in drafts:
        d = dict(d); d["state"] = "checked"
        c.execute(insert(schema.drafts).values(**d))
reports = {d["id"]: FactCheckReport.model_validate(d["factcheck"]) for d in drafts if d["factcheck"]}
print("drafts", len(drafts), "flagged verdicts", sum(len(r.flagged()) for r in reports.values()))
SA = "newsdesk@test-project.iam.gserviceaccount.com"

def measure(label):
    with ledger.engine.connect() as c:
        pubs = {r.draft_id: r.doc_id for r in c.execute(select(schema.publications)).all()}
    flagged = exact_one = dup_threads = 0
    for draft_id, doc_id in pubs.items():
        doc = fake.documents[doc_id]
        j = doc.to_json(include_tabs=True, comments=True, viewer=SA)
        anchors = j["tabs"][0]["documentTab"]["commentAnchors"]
        tab = doc.tabs[0]; starts = tab._starts()
        def text_of(anchor_id):
            out = []
            for r in anchors.get(anchor_id, {}).get("ranges", []):
                a, b = starts.index(r["startIndex"]), starts.index(r["endIndex"]); out.append("".join(ch.c for ch in tab.chars[a:b]))
            return out
        quotes = collections.Counter(t["plainTextQuote"] for t in j["comments"] if t["headPost"]["author"]["me"] and t["status"] == "OPEN")
        dup_threads += sum(n - 1 for n in quotes.values() if n > 1)
        article = doc.text(0)
        for v in reports[draft_id].flagged():
            claim = clean_text(v.claim.text)
            if claim not in article:
                continue
            flagged += 1
            hits = [t for t in j["comments"] if t["status"] == "OPEN" and text_of(t["anchorId"]) == [claim]]
            exact_one += len(hits) == 1
    rejected = [c for c in fake.calls if c.status >= 400 and c.status not in (503,)]
    print(f"{label}: docs {len(pubs)}, flagged claims in article text {flagged}, with exactly one open comment covering "
          f"exactly its text {exact_one}, duplicate open comments {dup_threads}, rejected requests {len(rejected)}, "
          f"batchUpdates {len(fake.calls_to('docs.documents.batchUpdate'))} answered, "
          f"{sum(c.status == 503 for c in fake.calls if c.method == 'docs.documents.batchUpdate')} applied with the answer lost")
    return pubs

# Every write_document's first batchUpdate loses its answer (applied, then 503).
real_write = P.GoogleClient.write_document
def lossy(self, *a, **k):
    fake.fail("docs.documents.batchUpdate", 503, apply=True)
    return real_write(self, *a, **k)
P.GoogleClient.write_document = lossy
r = publish_ready(config, ledger, retry_wait=wait_none()); assert not r.errors, r.errors
pubs = measure("publish, each write's answer lost once")
lengths = {d: [len(fake.documents[x].text(k)) for k in range(len(fake.documents[x].tabs))] for d, x in pubs.items()}
heads = sum(fake.documents[x].text(0).count(fake.documents[x].text(0).split("\n")[1]) for x in pubs.values())
print("headline occurrences in article tabs:", heads, "for", len(pubs), "docs; tabs per doc:", collections.Counter(len(fake.documents[x].tabs) for x in pubs.values()))
# Republish twice with a changed headline, one lost answer each.
for n in (1, 2):
    with ledger.begin() as c:
        for d in drafts:
            art = dict(d["article"]); art["headline"] = art["headline"] + f" (v{n})"
            c.execute(update(schema.drafts).where(schema.drafts.c.id == d["id"]).values(article=art, state="checked"))
    r = publish_ready(config, ledger, retry_wait=wait_none()); assert not r.errors, r.errors
    measure(f"republish {n}, answers lost")
with ledger.begin() as c:
    for d in drafts:
        art = dict(d["article"]); art["body"] = [dict(b, text=b["text"] + " Markets were calm.") for b in art["body"]]
        c.execute(update(schema.drafts).where(schema.drafts.c.id == d["id"]).values(article=art, state="checked"))
r = publish_ready(config, ledger, retry_wait=wait_none()); assert not r.errors, r.errors
measure("republish 3, every body paragraph changed (comments move), answers lost")
threads = sum(len(fake.documents[x].comments) for x in pubs.values())
print("comment threads in all docs:", threads)
# Approve: a third by chip, a third by folder, a third by prefix.
ids = list(pubs.items())
docs, drive = build_services(config, load_credentials(config))
ways = {}
for i, (d, x) in enumerate(ids):
    if i % 3 == 0: fake.documents[x].select_option("Approved"); ways[d] = "chip"
    elif i % 3 == 1: drive.files().update(fileId=x, addParents=APPROVED, removeParents=FOLDER, supportsAllDrives=True).execute(); ways[d] = "folder"
    else: drive.files().update(fileId=x, body={"name": "[APPROVED] x"}, supportsAllDrives=True).execute(); ways[d] = "prefix"
s = sync_approvals(config, ledger, retry_wait=wait_none())
with ledger.engine.connect() as c:
    got = {r.draft_id: r.approved_by for r in c.execute(select(schema.approvals)).all()}
print("sync errors", s.errors, "approved", len(got), "of", len(ids), "; approved_by matches the route:", sum(got.get(d) == w for d, w in ways.items()), collections.Counter(got.values()))
fake.stop()
