#!/usr/bin/env bash
# fetch_device_deps.sh: run HERE (a Debian machine with apt and a network), before lending the work to
# a GPU machine. That machine has nvcc, compute-sanitizer and Python with torch, transformers and
# tiktoken, but neither libjansson, libpcre2 nor libcriterion, and no network. This downloads their
# Debian packages (runtime libraries, the -dev packages with headers and link symlinks, and the
# runtime libraries they pull in) into .gpu-deps/ at the repository root, without installing
# anything. tools/gpu_check.sh unpacks them on the GPU machine with dpkg -x into /tmp/gpu-deps (never
# into /) and uses only the libraries that machine lacks.
#
#   tools/fetch_device_deps.sh         then carry .gpu-deps (git-ignored) to the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."

out=.gpu-deps
runtime="libjansson4 libpcre2-8-0 libcriterion3"
dev="libjansson-dev libpcre2-dev libcriterion-dev"
# Present on every system that can run a compiler; a second copy could only shadow the system's own.
base='^(libc6|libgcc-s1|gcc-[0-9]+-base|libstdc\+\+6)$'

for tool in apt-get apt-cache dpkg; do
    command -v "$tool" >/dev/null || { echo "fetch_device_deps: $tool not found (needs Debian/Ubuntu)" >&2; exit 1; }
done

# Runtime closure of the three libraries (Depends and Pre-Depends only), plus the three -dev packages
# themselves (their own -dev dependencies are not needed to compile and link against them).
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
              --no-replaces --no-enhances $runtime | grep -v '^ ' | grep -v '^<' | sort -u)
pkgs=$(printf '%s\n' $closure $dev | grep -Ev "$base" | sort -u)
[ -n "$pkgs" ] || { echo "fetch_device_deps: apt-cache found no packages (run apt-get update?)" >&2; exit 1; }

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
if ! (cd "$tmp" && apt-get download $pkgs); then
    echo "fetch_device_deps: apt-get download failed (stale package lists? try: apt-get update)" >&2
    rm -rf "$tmp"
    exit 1
fi
for p in $pkgs; do
    ls "$tmp/${p}_"*.deb >/dev/null 2>&1 || { echo "fetch_device_deps: $p was not downloaded" >&2; exit 1; }
done
rm -rf "$out"
mv "$tmp" "$out"
echo "fetch_device_deps: $(ls "$out"/*.deb | wc -l) packages, $(du -sh "$out" | cut -f1), in $out/:"
ls "$out"
echo "Carry $out to the GPU machine (it is git-ignored) and run tools/gpu_check.sh there."
