#!/usr/bin/env bash
# make pi-arm64: run the Pi runtime (edgecell[pi], no TensorFlow) in an emulated 64-bit ARM Debian and
# compare its outputs with the same commands on x86.
#
#   1. a Debian bookworm arm64 root (Python 3.11, as Raspberry Pi OS 12) with a venv holding the wheel's
#      dependencies, built with debootstrap + qemu-user-static and cached in $PI_ARM64_CACHE/<hash>, the hash
#      covering everything that went into it (suite, packages, the Pi 4 cpuinfo, the wheel's requirements and the
#      pinned versions); a rerun reuses it;
#   2. per run, an overlay on the cached root (the cache is never written), this commit's wheel installed with
#      the `pi` extra, a check that TensorFlow is absent;
#   3. on the models `make pi-check` converted (float32, int8) and 40+ images: `edgecell classify --json`,
#      the raw interpreter outputs (.ci/pi_arm64_probe.py), `edgecell bench` (its latency under emulation is
#      meaningless and is not reported), `edgecell scan` when the command exists, the TensorFlow-free tests;
#      the same commands with the x86 Pi environment ($PI_VENV); .ci/pi_arm64_compare.py compares them.
#
# Emulation pitfalls handled here (issue #17): qemu 7.2 passes the host's x86 /proc/cpuinfo through and LiteRT
# then crashes -> a Pi 4's cpuinfo is bind-mounted over /proc/cpuinfo; qemu's default CPU ("max") has an SME bug
# that breaks XNNPACK's int8 kernels -> QEMU_CPU=cortex-a72 (a Pi 4's core); without /sys, CPU detection fails
# quietly -> sysfs is mounted read-only. The host's /dev is never bind-mounted (debootstrap made the device
# nodes; /dev/shm is a fresh tmpfs), and every mount is undone before anything is deleted (a run killed outright
# leaves its mounts behind; the next run unmounts and removes them).
#
# Skips with one line (exit 0) when it cannot run: not root, no qemu-user-static/binfmt, no debootstrap.
# PI_ARM64_REQUIRED=1 turns a skip into a failure.
set -euo pipefail
{ # read whole before it runs: a checkout or edit of this file meanwhile cannot change a running step
cd "$(dirname "$0")/.."
REPO=$(pwd)

SUITE=bookworm
ARCH=arm64
MIRROR=${PI_ARM64_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python3-venv
# How the root is made (part of the cache key):
#  unpack (default): debootstrap --foreign downloads and verifies (Release signature, checksums) the packages and
#    unpacks the base; every package is then unpacked natively with dpkg-deb. No maintainer script runs: they are
#    what takes debootstrap's second stage 8 to 15 minutes under emulation on this shared 2-core machine (python's
#    byte-compilation, ca-certificates twice). What they would do and Python needs is done here: passwd/group
#    from base-passwd, ldconfig, a CA bundle for pip. The binaries (Python 3.11, glibc 2.36) are bookworm's.
#  debootstrap: the full two-stage debootstrap, every maintainer script run under emulation.
ROOT_MODE=${PI_ARM64_ROOT_MODE:-unpack}
QEMU_CPU_MODEL=${PI_ARM64_QEMU_CPU:-cortex-a72} # a Raspberry Pi 4's core; no SVE/SME (qemu 7.2's default "max" CPU breaks XNNPACK int8)
CACHE_DIR=${PI_ARM64_CACHE:-/var/cache/edgecell-arm64}
PI_VENV=${PI_VENV:-.venv-pi}
DEV_VENV=${VENV:-.venv}
EXPORT=${PI_ARM64_EXPORT:-build/pi-check/run/export}
WORK=build/pi-arm64
KEEP_ROOTS=3 # cached roots kept (about 450 MB each); older ones are removed
VENV_IN_ROOT=/opt/edgecell-venv
MIN_IMAGES=40
DEMO_PER_CLASS=8    # 8 x the model's classes synthetic cells: at least 40 images without ../shared
REAL_PER_FOLDER=2   # real images per class folder of ../shared/bloodcells and ../shared/more_cells
# The TensorFlow-free tests, as make pi-check runs them: the files holding tests marked `pi` (Makefile's PI_TESTS),
# those tests only, at least PI_MIN_TESTS passed (tests/count_passed.py).
PI_TESTS=${PI_ARM64_TESTS:-$(grep -l "pytest.mark.pi" tests/test_*.py | tr '\n' ' ')}
PI_MIN_TESTS=${PI_MIN_TESTS:-40}

say() { echo "pi-arm64: $*"; }
skip() {
	if [ "${PI_ARM64_REQUIRED:-0}" = 1 ]; then
		say "FAILED: cannot run: $*"
		exit 1
	fi
	say "SKIPPED: $*"
	exit 0
}
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0)) s"; }

# ---------------------------------------------------------------------------------------------- can it run?
[ "$(uname -s)" = Linux ] || skip "needs Linux (chroot, binfmt_misc, overlayfs); this is $(uname -s)"
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot and mounts); run it as root, e.g. sudo make pi-arm64"
[ "$(uname -m)" = x86_64 ] || skip "compares x86_64 with emulated arm64; this machine is $(uname -m)"
command -v qemu-aarch64-static >/dev/null || skip "qemu-user-static is not installed (apt-get install qemu-user-static binfmt-support debootstrap)"
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e $BINFMT/qemu-aarch64 ]; then
	# Without systemd nobody mounts binfmt_misc or registers qemu's handlers: do what systemd-binfmt would.
	mountpoint -q $BINFMT || mount -t binfmt_misc binfmt_misc $BINFMT 2>/dev/null || true
	command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
	[ -e $BINFMT/qemu-aarch64 ] && say "registered qemu-aarch64 with binfmt_misc (update-binfmts --enable qemu-aarch64)"
fi
[ -e $BINFMT/qemu-aarch64 ] || skip "no binfmt_misc handler for aarch64 (apt-get install binfmt-support qemu-user-static; update-binfmts --enable qemu-aarch64)"
grep -qx enabled $BINFMT/qemu-aarch64 || skip "the binfmt_misc handler qemu-aarch64 is disabled (update-binfmts --enable qemu-aarch64)"
# "F": the kernel opened the static qemu at registration, so it works inside a chroot without a copy of it.
grep -q '^flags:.*F' $BINFMT/qemu-aarch64 || skip "the qemu-aarch64 binfmt handler lacks the F (fix-binary) flag; use Debian's qemu-user-static"
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
grep -qw overlay /proc/filesystems || skip "the kernel has no overlayfs (needed to run on the cached root without changing it)"
for f in "$EXPORT/model_float32.tflite" "$EXPORT/model_int8.tflite" "$PI_VENV/bin/edgecell"; do
	[ -e "$f" ] || {
		say "$f is missing: running make pi-check first (it converts the models and builds the x86 Pi environment)"
		make pi-check PI_VENV="$PI_VENV" VENV="$DEV_VENV"
		break
	}
done

# ---------------------------------------------------------------------------------------------- mounts and cleanup
# Every mount this script makes is listed in MOUNTS and undone in reverse order; a folder is only deleted when
# findmnt shows nothing mounted under it, and then without crossing into another file system.
MOUNTS=()
CLEAN=()
mount_at() { # mount_at TARGET mount-arguments...
	local target=$1
	shift
	mount "$@" "$target"
	MOUNTS+=("$target")
}
mounted_under() { findmnt -rn -o TARGET | awk -v p="$1" 'index($0, p "/") == 1 || $0 == p'; }
unmount_all() {
	local i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		if mountpoint -q "${MOUNTS[i]}"; then
			umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" || say "WARNING: could not unmount ${MOUNTS[i]}"
		fi
	done
	MOUNTS=()
}
remove_dir() { # remove_dir DIR: unmount whatever is still mounted under DIR (deepest first), then delete it
	local dir=$1 m
	[ -e "$dir" ] || return 0
	for m in $(mounted_under "$dir" | sort -r); do
		say "unmounting leftover $m"
		umount "$m" 2>/dev/null || umount -l "$m" || true
	done
	if [ -n "$(mounted_under "$dir")" ]; then
		say "WARNING: not deleting $dir: still mounted under it: $(mounted_under "$dir" | tr '\n' ' ')"
		return 1
	fi
	rm -rf --one-file-system "$dir"
}
cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	unmount_all
	local d
	for d in "${CLEAN[@]}"; do remove_dir "$d" || rc=1; done
	if [ -n "${ROOTS_GLOB:-}" ] && [ -n "$(mounted_under "$ROOTS_GLOB")" ]; then
		say "WARNING: still mounted: $(mounted_under "$ROOTS_GLOB" | tr '\n' ' ')"
		rc=1
	fi
	exit $rc
}
trap cleanup EXIT
trap 'say "FAILED: line $LINENO: $BASH_COMMAND (exit $?)"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

pi4_cpuinfo() { # a Raspberry Pi 4's /proc/cpuinfo (Cortex-A72, 64-bit kernel), one block per host core
	local i
	for ((i = 0; i < $1; i++)); do
		printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
	done
	printf 'Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
}

# What the chroot sees as the machine: mounted over a root (cached or being built), undone by unmount_all.
mount_machine() { # mount_machine ROOT
	local root=$1
	mount_at "$root/proc" -t proc proc
	mount_at "$root/proc/cpuinfo" --bind "$RUN/cpuinfo"
	mount_at "$root/sys" -t sysfs -o ro,nosuid,nodev,noexec sysfs
	mount_at "$root/dev/shm" -t tmpfs -o nosuid,nodev,size=256m tmpfs
}
in_root() { # in_root ROOT command...: a clean environment (no host PIP_*, proxies or CA settings), Pi 4 CPU
	local root=$1
	shift
	QEMU_CPU=$QEMU_CPU_MODEL chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=$VENV_IN_ROOT/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		QEMU_CPU=$QEMU_CPU_MODEL PIP_DISABLE_PIP_VERSION_CHECK=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=3 "$@"
}

HOST_PY=$(command -v python3.11 || true)
[ -n "$HOST_PY" ] || HOST_PY=$DEV_VENV/bin/python
"$HOST_PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || skip "needs a Python 3.11 on the host to byte-compile the arm64 root's packages (python3.11)"
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -s "$HOST_CA" ] || skip "no CA bundle at $HOST_CA for pip inside the arm64 root (set PIP_CERT to one)"
mkdir -p "$CACHE_DIR" build
# A run killed outright (SIGKILL, a reboot) cannot run its cleanup and leaves its folder with the overlay, /proc and
# /sys still mounted. Each run holds an exclusive lock on its folder's .running file until it ends, however it ends;
# a folder whose lock is free is such a leftover: unmounted and removed here (remove_dir) by the next run.
for d in "$CACHE_DIR"/run.*/; do
	d=${d%/}
	[ -d "$d" ] || continue
	if [ ! -e "$d/.running" ]; then
		say "WARNING: leftover $d has no .running lock (an older pi_arm64.sh, or a run stopped while starting); not removed: unmount what is under it, then delete it"
	elif flock -n "$d/.running" true; then
		say "removing the leftover $d of a run that was killed (unmounting what is under it first)"
		remove_dir "$d" || true
	fi
done
RUN=$(mktemp -d "$CACHE_DIR/run.XXXXXX")
exec 7>"$RUN/.starting"
flock -x 7 # held until this process ends (see above); locked before it is named .running, so never seen free
mv "$RUN/.starting" "$RUN/.running"
CLEAN+=("$RUN")
ROOTS_GLOB=$RUN
pi4_cpuinfo "$(nproc --all)" >"$RUN/cpuinfo"

# ---------------------------------------------------------------------------------------------- the wheel and the cache key
rm -rf "$WORK"
mkdir -p "$WORK/wheel" "$WORK/stage/images" "$WORK/x86" "$WORK/arm64"
"$DEV_VENV/bin/python" -m pip wheel --no-deps --no-build-isolation -w "$WORK/wheel" . >"$RUN/wheel.log" 2>&1 || {
	cat "$RUN/wheel.log"
	say "FAILED: building edgecell's wheel (log above)"
	exit 1
}
WHEEL=$(ls "$WORK"/wheel/edgecell-*.whl)
# The x86 side runs the very wheel the arm64 side gets (the Pi environment may hold an older build of edgecell).
"$PI_VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$WHEEL"
# The wheel's requirements (pi extra included) pinned to the versions the x86 Pi environment resolved, so both
# machines run the same numpy, Pillow and LiteRT releases; pytest and hypothesis at the dev environment's versions.
"$PI_VENV/bin/python" -m pip freeze --exclude edgecell >"$RUN/constraints.txt"
for tool in pytest hypothesis; do
	grep -qi "^$tool==" "$RUN/constraints.txt" || "$DEV_VENV/bin/python" -m pip freeze | grep -i "^$tool==" >>"$RUN/constraints.txt"
done
# What the root installs: the base requirements and the pi extra's (not train's or dev's).
REQUIRES=$(unzip -p "$WHEEL" '*.dist-info/METADATA' | grep '^Requires-Dist:' | grep -v 'extra ==' | sort
	unzip -p "$WHEEL" '*.dist-info/METADATA' | grep '^Requires-Dist:.*extra == "pi"' | sort)
KEY=$(
	{
		echo "suite=$SUITE arch=$ARCH mirror=$MIRROR variant=minbase include=$INCLUDE mode=$ROOT_MODE venv=$VENV_IN_ROOT layout=6 compile=host"
		sha256sum <"$HOST_CA"
		cat "$RUN/cpuinfo"
		echo "$REQUIRES"
		cat "$RUN/constraints.txt"
	} | sha256sum | cut -c1-16
)
CACHED=$CACHE_DIR/$KEY

build_root() {
	command -v debootstrap >/dev/null || skip "debootstrap is not installed and no cached arm64 root exists (apt-get install debootstrap)"
	local tmp
	tmp=$(mktemp -d "$CACHE_DIR/.build-$KEY.XXXXXX")
	CLEAN+=("$tmp")
	say "building the Debian $SUITE $ARCH root in $CACHED ($ROOT_MODE, then pip inside)"
	local t=$SECONDS foreign=--foreign
	[ "$ROOT_MODE" = debootstrap ] && foreign=
	if ! debootstrap $foreign --arch=$ARCH --variant=minbase --include=$INCLUDE $SUITE "$tmp/root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1; then
		tail -n 20 "$tmp/debootstrap.log"
		say "FAILED: debootstrap (log above)"
		exit 1
	fi
	local m
	for m in $(mounted_under "$tmp" | sort -r); do umount "$m" || umount -l "$m"; done # debootstrap's own /proc
	if [ "$ROOT_MODE" != debootstrap ]; then
		local deb
		for deb in "$tmp"/root/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
		cp "$tmp/root/usr/share/base-passwd/passwd.master" "$tmp/root/etc/passwd"
		cp "$tmp/root/usr/share/base-passwd/group.master" "$tmp/root/etc/group"
		chroot "$tmp/root" /sbin/ldconfig
		rm -rf "$tmp/root/debootstrap" "$tmp/root/var/cache/apt/archives/"*.deb
	fi
	say "debootstrap ($ROOT_MODE) took $((SECONDS - t)) s"
	cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
	# The host's CA bundle, where Debian's pip and OpenSSL look for one: this network's HTTPS proxy presents a
	# certificate that Mozilla's bundle alone rejects ("self-signed certificate in certificate chain").
	# Nothing else of the host's pip setup goes in (no PIP_* variables, no pip.conf, no index mirror).
	mkdir -p "$tmp/root/etc/ssl/certs"
	cp "$HOST_CA" "$tmp/root/etc/ssl/certs/ca-certificates.crt"
	cp "$RUN/constraints.txt" "$tmp/root/constraints.txt"
	cp "$WHEEL" "$tmp/root/"
	mount_machine "$tmp/root"
	t=$SECONDS
	# The wheel's dependencies (pi extra) and the test tools, from PyPI (the host's pip mirror has no aarch64
	# wheels), with bookworm's own pip (23.0.1); then edgecell itself is removed again: each run installs its
	# own commit's wheel.
	in_root "$tmp/root" python3 -m venv $VENV_IN_ROOT
	in_root "$tmp/root" pip install --quiet --no-compile -c /constraints.txt "/$(basename "$WHEEL")[pi]" pytest hypothesis
	in_root "$tmp/root" pip uninstall --quiet --yes edgecell
	# Byte-compile natively (a .pyc depends on the Python minor version only: host $HOST_PY and bookworm's
	# 3.11.2 share it); under emulation pip's own compilation was most of the minutes this step took.
	"$HOST_PY" -m compileall -q -j 0 "$tmp/root$VENV_IN_ROOT/lib/python3.11/site-packages" >/dev/null
	rm -f "$tmp/root/$(basename "$WHEEL")"
	rm -rf "$tmp/root/root/.cache" "$tmp/root/var/cache/apt/archives/"*.deb
	unmount_all
	[ -z "$(mounted_under "$tmp")" ] || {
		say "FAILED: still mounted under $tmp: $(mounted_under "$tmp" | tr '\n' ' ')"
		exit 1
	}
	say "pip inside the root took $((SECONDS - t)) s"
	echo "$KEY" >"$tmp/root/.edgecell-arm64-key"
	mkdir -p "$CACHED"
	mv -T "$tmp/root" "$CACHED/root"
}

prune_cache() { # keep the KEEP_ROOTS most recently used roots; never one that a running make pi-arm64 holds
	local d k
	for d in $(ls -1dt "$CACHE_DIR"/[0-9a-f]*/ 2>/dev/null | tail -n +$((KEEP_ROOTS + 1))); do
		k=$(basename "$d")
		[ "$k" != "$KEY" ] || continue
		exec 8>"$CACHE_DIR/.lock-$k"
		if flock -n -x 8; then
			say "removing the arm64 root $d (not among the $KEEP_ROOTS most recently used)"
			remove_dir "${d%/}" && rm -f "$CACHE_DIR/.lock-$k"
		fi
		exec 8>&-
	done
}

exec 9>"$CACHE_DIR/.lock-$KEY"
flock 9 # two runs at once: the second waits for the first's build, then reuses it
if [ -f "$CACHED/root/.edgecell-arm64-key" ]; then
	say "reusing the cached arm64 root $CACHED (key covers suite, packages, cpuinfo, requirements)"
else
	remove_dir "$CACHED" # an unfinished earlier build (the key file is written last)
	build_root
fi
flock -s 9 # held shared until the end: prune_cache (of another run) leaves this root alone
touch "$CACHED"   # most recently used
prune_cache

# ---------------------------------------------------------------------------------------------- the inputs
STAGE=$WORK/stage
IS_IMAGE=(\( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.tif' -o -iname '*.tiff' -o -iname '*.bmp' \))
cp -r "$EXPORT" "$STAGE/export"
cp -r .ci "$STAGE/.ci"
cp -r tests "$STAGE/tests"
cp pyproject.toml "$STAGE/"
N_CLASSES=$("$PI_VENV/bin/python" -c "import json,sys; print(len(json.load(open(sys.argv[1]))['classes']))" "$EXPORT/model_int8.json")
"$PI_VENV/bin/edgecell" demo-data "$STAGE/images/demo" --per-class "$DEMO_PER_CLASS" --seed 17 >/dev/null
for src in ../shared/bloodcells ../shared/more_cells; do
	[ -d "$src" ] || {
		say "$src not found: synthetic images only"
		continue
	}
	# The first REAL_PER_FOLDER images of every folder that holds images (sorted: the same ones every run).
	while IFS= read -r d; do
		mapfile -t picked < <(find "$d" -maxdepth 1 -type f "${IS_IMAGE[@]}" | sort)
		[ ${#picked[@]} -gt 0 ] || continue
		dest="$STAGE/images/$(basename "$src")/${d#"$src"/}"
		mkdir -p "$dest"
		cp "${picked[@]:0:$REAL_PER_FOLDER}" "$dest/"
	done < <(find "$src" -mindepth 1 -type d | sort)
done
mapfile -t IMAGES < <(cd "$STAGE" && find images -type f "${IS_IMAGE[@]}" | sort)
say "${#IMAGES[@]} images ($(cd "$STAGE" && find images/demo -type f "${IS_IMAGE[@]}" | wc -l) synthetic, $N_CLASSES classes), models: $(ls "$STAGE"/export/*.tflite | xargs -n1 basename | tr '\n' ' ')"
[ "${#IMAGES[@]}" -ge $MIN_IMAGES ] || {
	say "FAILED: only ${#IMAGES[@]} images staged, at least $MIN_IMAGES needed"
	exit 1
}
printf '%s\n' "${IMAGES[@]}" >"$STAGE/images.txt"
HAS_SCAN=0
if "$PI_VENV/bin/edgecell" scan --help >/dev/null 2>&1; then
	# Fields of view for scan: synthetic ones (tests/_fields.py, when present) and real BCCD fields from ../shared.
	HAS_SCAN=1
	mkdir -p "$STAGE/fields"
	[ -f tests/_fields.py ] && "$PI_VENV/bin/python" tests/_fields.py "$STAGE/fields/synthetic" >/dev/null
	if [ -d ../shared/more_cells/bccd_fields/JPEGImages ]; then
		mapfile -t picked < <(find ../shared/more_cells/bccd_fields/JPEGImages -maxdepth 1 -type f "${IS_IMAGE[@]}" | sort)
		[ ${#picked[@]} -eq 0 ] || cp "${picked[@]:0:4}" "$STAGE/fields/"
	fi
	say "edgecell scan exists: $(find "$STAGE/fields" -type f "${IS_IMAGE[@]}" | wc -l) fields of view"
	[ -n "$(find "$STAGE/fields" -type f "${IS_IMAGE[@]}")" ] || HAS_SCAN=0
fi

# The commands, identical on both machines: run from the staging folder with relative paths, outputs in OUT.
cat >"$STAGE/commands.sh" <<EOF
set -eu
OUT=\$1
mapfile -t IMAGES < images.txt
for p in float32 int8; do
	edgecell classify --model export --precision \$p --json \$OUT/classify_\$p.json "\${IMAGES[@]}" >\$OUT/classify_\$p.log
	python .ci/pi_arm64_probe.py export/model_\$p.tflite \$OUT/probe_\$p.jsonl "\${IMAGES[@]}"
done
# bench: that it runs; its latency under emulation says nothing about a Pi and is not reported
edgecell bench export/model_float32.tflite export/model_int8.tflite --runs 5 --warmup 1 --threads 1 --data images/demo --limit 10 --json \$OUT/bench.json >\$OUT/bench.log
if [ $HAS_SCAN = 1 ]; then
	for p in float32 int8; do
		edgecell scan --model export --precision \$p --json \$OUT/scan_\$p.json fields >\$OUT/scan_\$p.log
	done
fi
EOF

# ---------------------------------------------------------------------------------------------- x86
t=$SECONDS
(cd "$STAGE" && PATH="$REPO/$PI_VENV/bin:$PATH" bash commands.sh "$REPO/$WORK/x86")
say "x86 ($PI_VENV): classify, raw outputs and bench in $((SECONDS - t)) s"

# ---------------------------------------------------------------------------------------------- arm64
ROOT=$RUN/root
mkdir -p "$RUN/upper" "$RUN/ovl" "$ROOT"
mount_at "$ROOT" -t overlay overlay -o "lowerdir=$CACHED/root,upperdir=$RUN/upper,workdir=$RUN/ovl"
mount_machine "$ROOT"
cp -r "$STAGE" "$ROOT/work"
cp "$WHEEL" "$ROOT/work/"
mkdir -p "$ROOT/work/out"
t=$SECONDS
in_root "$ROOT" pip install --quiet --no-compile --no-index --find-links /work "edgecell[pi]"
in_root "$ROOT" python - <<'EOF'
import ctypes, importlib.util, platform, sys
assert platform.machine() == "aarch64", platform.machine()
assert sys.version_info[:2] == (3, 11), sys.version
if importlib.util.find_spec("tensorflow") is not None:
    sys.exit("pi-arm64: FAILED: TensorFlow got installed into the arm64 Pi environment")
hwcap = ctypes.CDLL(None).getauxval(16)  # AT_HWCAP: bit 22 = SVE; a Cortex-A72 has none (qemu's "max" CPU has)
assert not hwcap & (1 << 22), "QEMU_CPU did not take effect: the emulated CPU has SVE"
import ai_edge_litert, numpy, PIL
print(f"pi-arm64: arm64 root: {platform.machine()}, Python {platform.python_version()}, glibc {platform.libc_ver()[1]}, "
      f"numpy {numpy.__version__}, Pillow {PIL.__version__}, ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}, no TensorFlow")
EOF
in_root "$ROOT" bash -c 'cd /work && bash commands.sh /work/out'
say "arm64 (emulated, QEMU_CPU=$QEMU_CPU_MODEL): wheel install, classify, raw outputs and bench in $((SECONDS - t)) s"
cp -r "$ROOT/work/out/." "$WORK/arm64/"

t=$SECONDS
# The TensorFlow-free tests, inside the arm64 root against the installed wheel (not the source tree).
# shellcheck disable=SC2086
# Deselected: test_ctrl_c_during_classify_with_worker_processes sends Ctrl-C at a moment chosen for real-time
# speed; it fails on x86 too on main today under load (a forkserver child's traceback reaches stderr), and under
# 100x emulation the moment is always wrong. It runs in the normal suite.
# test_classify_json and test_classify_other_json are deselected here: their JPEGs are encoded at run time by this platform's libjpeg, so their bytes
# (and the 4-decimal probabilities of its x86 golden file) differ on arm64; x86 = arm64 on the same files is what
# the comparison above checks, pixel for pixel.
if ! in_root "$ROOT" bash -c "cd /work && python -m pytest -m pi -q -p no:cacheprovider --junitxml=out/pytest.xml --deselect tests/test_decode.py::test_ctrl_c_during_classify_with_worker_processes --deselect tests/test_golden.py::test_classify_json --deselect tests/test_golden.py::test_classify_other_json $PI_TESTS && python tests/count_passed.py out/pytest.xml --at-least $PI_MIN_TESTS" >"$WORK/arm64/pytest.log" 2>&1; then
	tail -n 30 "$WORK/arm64/pytest.log"
	say "FAILED: the TensorFlow-free tests failed on arm64 (log: $WORK/arm64/pytest.log)"
	exit 1
fi
say "arm64 tests ($PI_TESTS): $(tail -n 1 "$WORK/arm64/pytest.log") in $((SECONDS - t)) s"

unmount_all
[ -z "$(mounted_under "$RUN")" ] || {
	say "FAILED: still mounted under $RUN after unmounting"
	exit 1
}

# ---------------------------------------------------------------------------------------------- compare
"$PI_VENV/bin/python" .ci/pi_arm64_compare.py "$WORK/x86" "$WORK/arm64" --min-images $MIN_IMAGES
say "passed in $(elapsed) (outputs in $WORK/x86 and $WORK/arm64; bench latency under emulation is not a Pi figure)"
exit 0
}
