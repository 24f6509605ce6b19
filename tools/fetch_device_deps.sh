#!/usr/bin/env bash
# fetch_device_deps.sh: run HERE (Debian/Ubuntu, amd64, apt with a network), before lending the work to
# a GPU machine. That machine has nvcc, compute-sanitizer and Python with torch, transformers and
# tiktoken, but neither jansson, PCRE2 nor Criterion, and no network. This makes ONE git-ignored
# folder, .gpu-deps/ at the repository root (at most 20 MiB; about 5 today), ready to use as it is:
#
#   .gpu-deps/include/   jansson.h, pcre2.h, criterion/      (from the -dev packages)
#   .gpu-deps/lib/       libjansson, libpcre2-8, libcriterion and the libraries they need at run
#                        time that a GPU machine's image may lack (libgit2, nanomsg, mbedtls, ...)
#   .gpu-deps/MANIFEST   the packages and versions it holds, and where it was made
#
#   tools/fetch_device_deps.sh        then name .gpu-deps in the device call's carry
#
# Nothing is installed anywhere: the packages are downloaded with `apt-get download` and unpacked with
# `dpkg -x` into a scratch folder. tools/gpu_check.sh builds against the folder with -I/-L and bakes
# -Wl,--disable-new-dtags,-rpath,.gpu-deps/lib into its build-gpu binaries only (DT_RPATH, unlike
# DT_RUNPATH, also serves libcriterion's own needs: libgit2, nanomsg, ...): no ldconfig, no
# LD_LIBRARY_PATH. Checked here with the system's copies hidden in a mount namespace: headers, link
# and every library of the closure came from .gpu-deps, and the tokenizer and loader suites passed. Libraries every
# system has, and those that must never be shadowed (libc, libgcc, libstdc++, libssl/libcrypto, zlib,
# libffi, Kerberos), are left out on purpose and refused if they appear; the check's deps step lists
# what the binaries resolve to on the GPU machine, so a missing one shows up there by name.
set -euo pipefail
cd "$(dirname "$0")/.."

out=.gpu-deps
max_bytes=$((20 * 1024 * 1024))
runtime="libjansson4 libpcre2-8-0 libcriterion3"
dev="libjansson-dev libpcre2-dev libcriterion-dev"
# Packages the GPU machine's system provides (and which must not be shadowed): never copied.
system='^(libc6|libgcc-s1|gcc-[0-9]+-base|libstdc\+\+6|libssl3|libssl3t64|zlib1g|libffi8|libcom-err2|libkeyutils1|libkrb5-3|libkrb5support0|libk5crypto3|libgssapi-krb5-2|libzstd1|liblzma5|libcrypt1)$'
never='^(libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libgcc_s|libstdc\+\+|libssl|libcrypto|libz\.so|libffi)'

for tool in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "fetch_device_deps: $tool not found (needs Debian/Ubuntu)" >&2; exit 1; }
done
arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || { echo "fetch_device_deps: this is $arch; the GPU machine is amd64 (x86-64)" >&2; exit 1; }
multiarch=x86_64-linux-gnu

# The runtime closure of the three libraries (Depends and Pre-Depends), minus the system's, plus the
# three -dev packages themselves (their own -dev dependencies are not needed to compile and link).
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
              --no-replaces --no-enhances $runtime | grep -v '^ ' | grep -v '^<' | sort -u)
pkgs=$(printf '%s\n' $closure $dev | grep -Ev "$system" | sort -u)
[ -n "$pkgs" ] || { echo "fetch_device_deps: apt-cache found no packages (run apt-get update?)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/debs" "$tmp/root" "$tmp/new/include" "$tmp/new/lib"
if ! (cd "$tmp/debs" && apt-get download $pkgs >/dev/null); then
    echo "fetch_device_deps: apt-get download failed (stale package lists? try: apt-get update)" >&2
    exit 1
fi
for p in $pkgs; do
    ls "$tmp/debs/${p}_"*.deb >/dev/null 2>&1 || { echo "fetch_device_deps: $p was not downloaded" >&2; exit 1; }
done
for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done

# Headers of the three libraries, and every shared object (with its symlinks) of the packages.
inc="$tmp/root/usr/include"
cp -a "$inc"/jansson*.h "$inc"/pcre2*.h "$inc/criterion" "$tmp/new/include/"
for d in "$tmp/root/usr/lib/$multiarch" "$tmp/root/lib/$multiarch"; do
    [ -d "$d" ] || continue
    find "$d" -maxdepth 1 \( -type f -o -type l \) -name 'lib*.so*' -exec cp -a {} "$tmp/new/lib/" \;
done
find "$tmp/new/lib" -xtype l -delete # symlinks to variants not shipped (pcre2-16, -32, posix)
bad=$(ls "$tmp/new/lib" | grep -E "$never" || true)
[ -z "$bad" ] || { echo "fetch_device_deps: refusing to ship system libraries: $bad" >&2; exit 1; }
for so in libjansson.so libpcre2-8.so libcriterion.so; do
    [ -e "$tmp/new/lib/$so" ] || { echo "fetch_device_deps: $so missing after unpacking" >&2; exit 1; }
done

{
    echo "made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME") by tools/fetch_device_deps.sh"
    for f in "$tmp"/debs/*.deb; do dpkg-deb -f "$f" Package Version | paste -sd' '; done
} >"$tmp/new/MANIFEST"

bytes=$(du -sb "$tmp/new" | cut -f1)
if [ "$bytes" -gt "$max_bytes" ]; then
    echo "fetch_device_deps: $bytes bytes, over the 20 MiB limit" >&2
    exit 1
fi
rm -rf "$out"
mv "$tmp/new" "$out"
echo "fetch_device_deps: $out: $(du -sh "$out" | cut -f1), $(ls "$out/lib" | wc -l) library files, $(wc -l <"$out/MANIFEST") lines of MANIFEST:"
cat "$out/MANIFEST"
echo "Name .gpu-deps in the device call's carry; tools/gpu_check.sh uses it from there."
