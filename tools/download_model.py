#!/usr/bin/env python3
"""Download a GPT-2 model directory from the Hugging Face Hub.

    download_model.py NAME [--out DIR] [--revision REV] [--no-hub-lib] [--timeout S]

NAME is gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2 (the short names resolve to the
openai-community/ and distilbert/ repos) or any repo id "owner/name". Fetches config.json, the
weights (model.safetensors, or model.safetensors.index.json and every shard it names),
vocab.json and merges.txt into DIR (default models/NAME), which is exactly what build/gpt2 needs.

Uses huggingface_hub when it is importable (its cache, HF_TOKEN and HF_ENDPOINT apply), else
plain urllib on https://huggingface.co/REPO/resolve/REV/FILE (HF_ENDPOINT overrides the host;
--no-hub-lib forces this path). Exits 1 with a message when the Hub cannot be reached or a file is
missing; files already complete in DIR are not fetched again.
"""

import argparse
import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

# Short names -> canonical repo ids (the un-namespaced ids redirect there on the Hub).
ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

INDEX = "model.safetensors.index.json"


class DownloadError(Exception):
    pass


class NotFound(DownloadError):
    pass


class Unreachable(DownloadError):
    pass


class UrllibFetcher:
    """Fetches FILE of a repo from ENDPOINT/REPO/resolve/REV/FILE."""

    def __init__(self, repo, revision, timeout):
        self.repo, self.revision, self.timeout = repo, revision, timeout
        self.endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")

    def url(self, name):
        return "%s/%s/resolve/%s/%s" % (self.endpoint, self.repo,
                                        urllib.parse.quote(self.revision, safe=""),
                                        urllib.parse.quote(name))

    def fetch(self, name, dest):
        url = self.url(name)
        tmp = dest + ".part"
        req = urllib.request.Request(url, headers={"User-Agent": "gpt2-download_model/1"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r, open(tmp, "wb") as f:
                total = r.headers.get("Content-Length")
                shutil.copyfileobj(r, f, length=1 << 20)
        except urllib.error.HTTPError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            if e.code == 404:
                raise NotFound("%s: not found (HTTP 404)" % url)
            raise DownloadError("%s: HTTP %d %s" % (url, e.code, e.reason))
        except (urllib.error.URLError, socket.timeout, OSError) as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            reason = getattr(e, "reason", e)
            raise Unreachable("cannot reach %s: %s" % (url, reason))
        if total is not None and os.path.getsize(tmp) != int(total):
            os.remove(tmp)
            raise DownloadError("%s: got %s bytes of %s" % (url, os.path.getsize(tmp), total))
        os.replace(tmp, dest)


class HubFetcher:
    """Fetches through huggingface_hub.hf_hub_download and copies the file out of its cache."""

    def __init__(self, repo, revision, timeout):
        # The timeouts are read when huggingface_hub is first imported.
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout)))
        import huggingface_hub  # noqa: F401  (ImportError -> urllib path)
        self.repo, self.revision, self.timeout = repo, revision, timeout

    def fetch(self, name, dest):
        import huggingface_hub
        try:
            from huggingface_hub import errors
        except ImportError:  # older huggingface_hub
            from huggingface_hub import utils as errors
        try:
            path = huggingface_hub.hf_hub_download(self.repo, name, revision=self.revision)
        except errors.LocalEntryNotFoundError as e:
            # Offline (or the Hub unreachable) and not in the cache. This class derives from
            # EntryNotFoundError, so it must be caught first.
            raise Unreachable("cannot reach the Hub for %s/%s and it is not cached (%s)" %
                                (self.repo, name, first_line(e)))
        except errors.EntryNotFoundError as e:
            raise NotFound("%s/%s: not found (%s)" % (self.repo, name, first_line(e)))
        except errors.RepositoryNotFoundError as e:
            raise DownloadError("repository %s not found or not accessible (%s)" %
                                (self.repo, first_line(e)))
        except errors.RevisionNotFoundError as e:
            raise DownloadError("revision %s of %s not found (%s)" % (self.revision, self.repo,
                                                                     first_line(e)))
        except Exception as e:  # network errors come in many types (requests, httpx, OSError)
            raise DownloadError("cannot download %s/%s: %s: %s" % (self.repo, name,
                                                                    type(e).__name__,
                                                                    first_line(e)))
        tmp = dest + ".part"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)


def first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def download(fetcher, out_dir, log):
    os.makedirs(out_dir, exist_ok=True)

    def get(name):
        dest = os.path.join(out_dir, name)
        if os.path.isfile(dest) and os.path.getsize(dest) > 0:
            log("  have %s" % name)
            return dest
        log("  fetching %s" % name)
        fetcher.fetch(name, dest)
        return dest

    get("config.json")
    try:
        get("model.safetensors")
    except NotFound:
        log("  no model.safetensors; trying the sharded index")
        try:
            index_path = get(INDEX)
        except NotFound:
            raise DownloadError("the repo has neither model.safetensors nor %s (only .bin or "
                                "other weights, which build/gpt2 cannot read)" % INDEX)
        try:
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DownloadError("%s: malformed index (%s)" % (index_path, e))
        for s in shards:
            if os.path.basename(s) != s or not s.endswith(".safetensors"):
                raise DownloadError("%s: refusing shard name %r" % (index_path, s))
            get(s)
    get("vocab.json")
    get("merges.txt")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("name", metavar="NAME",
                    help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or a repo id owner/name")
    ap.add_argument("--out", help="output directory (default models/NAME)")
    ap.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    ap.add_argument("--no-hub-lib", action="store_true",
                    help="use urllib even when huggingface_hub is importable")
    ap.add_argument("--timeout", type=float, default=20.0,
                    help="network timeout in seconds (default 20)")
    args = ap.parse_args()

    repo = ALIASES.get(args.name, args.name)
    if repo.count("/") != 1 or any(not p for p in repo.split("/")):
        ap.error("NAME must be one of %s or a repo id owner/name, got %r" %
                 (", ".join(ALIASES), args.name))
    out_dir = args.out or os.path.join("models", args.name.split("/")[-1])

    fetcher = None
    if not args.no_hub_lib:
        try:
            fetcher = HubFetcher(repo, args.revision, args.timeout)
            how = "huggingface_hub"
        except ImportError:
            fetcher = None
    if fetcher is None:
        fetcher = UrllibFetcher(repo, args.revision, args.timeout)
        how = "urllib"
    print("downloading %s (revision %s) into %s with %s" % (repo, args.revision, out_dir, how))
    created = not os.path.exists(out_dir)
    try:
        download(fetcher, out_dir, print)
    except DownloadError as e:
        if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        print("error: %s" % e, file=sys.stderr)
        if isinstance(e, Unreachable):
            print("error: download of %s failed: no network connection to the Hub?" % repo,
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    print("done: %s" % out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
