# Sourced by scripts/serve, scripts/test, scripts/build-deb,
# scripts/verify-units and .ci/run: finds the Rust toolchain and decides who
# builds.
#
# Why: the README's commands are `sudo scripts/serve` and `sudo scripts/test`,
# and sudo resets PATH (secure_path), dropping ~/.cargo/bin where rustup puts
# cargo, even for root. So cargo is looked for, in this order, in
#   the invoking user's ~/.cargo/bin ($SUDO_USER's home, under sudo),
#   $CARGO_HOME/bin, $HOME/.cargo/bin, /root/.cargo/bin, then PATH.
# A rustup proxy needs its RUSTUP_HOME, which sudo's HOME hides too: the
# .rustup beside the .cargo that held cargo is used.
#
# Who builds: under sudo, the invoking user when the checkout is theirs and
# the toolchain is one they can run (theirs, or a system one), so that
# target/ stays theirs; otherwise whoever runs the script. What needs root
# (the tests, the daemon) then runs as root with the same toolchain.
#
# After `toolchain_init NAME`:
#   builder_cargo ARGS...   cargo as the builder
#   root_cargo ARGS...      cargo as the current user (root), same toolchain
#   give_back_target        hands files root left under target/ back to the
#                           builder (no-op when the builder is root)
#   TOOLCHAIN_BIN           the directory holding cargo (also put first on PATH)

toolchain_home_of() {
  getent passwd "$1" | cut -d: -f6
}

toolchain_init() {
  local who=$1 cand dir home=""
  local -a cands=()
  TOOLCHAIN_BUILDER=""
  if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    home=$(toolchain_home_of "$SUDO_USER")
    [ -n "$home" ] && cands+=("$home/.cargo/bin/cargo")
  fi
  [ -n "${CARGO_HOME:-}" ] && cands+=("$CARGO_HOME/bin/cargo")
  [ -n "${HOME:-}" ] && cands+=("$HOME/.cargo/bin/cargo")
  cands+=(/root/.cargo/bin/cargo)
  cand=$(command -v cargo 2>/dev/null || true)
  [ -n "$cand" ] && cands+=("$cand")
  TOOLCHAIN_CARGO=""
  for cand in "${cands[@]}"; do
    if [ -x "$cand" ]; then
      TOOLCHAIN_CARGO=$cand
      break
    fi
  done
  if [ -z "$TOOLCHAIN_CARGO" ]; then
    local where="" d
    for cand in "${cands[@]}"; do
      d=$(dirname "$cand")
      case " $where " in *" $d,"*) ;; *) where+="$d, " ;; esac
    done
    echo "$who: no Rust toolchain: cargo is not in ${where}nor on PATH; install one with rustup (https://rustup.rs: curl --proto '=https' -sSf https://sh.rustup.rs | sh), Rust >= 1.85" >&2
    exit 1
  fi
  TOOLCHAIN_BIN=$(dirname "$TOOLCHAIN_CARGO")
  TOOLCHAIN_ENV=("PATH=$TOOLCHAIN_BIN:$PATH")
  # A rustup layout: <home>/.cargo/bin/cargo with <home>/.rustup beside it.
  if [ "$(basename "$TOOLCHAIN_BIN")" = bin ]; then
    dir=$(dirname "$TOOLCHAIN_BIN")
    [ -z "${CARGO_HOME:-}" ] && [ "$(basename "$dir")" = .cargo ] && TOOLCHAIN_ENV+=("CARGO_HOME=$dir")
    if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$(dirname "$dir")/.rustup" ]; then
      TOOLCHAIN_ENV+=("RUSTUP_HOME=$(dirname "$dir")/.rustup")
    fi
  fi
  export PATH="$TOOLCHAIN_BIN:$PATH"

  # Build as the sudo user when target/ is theirs to keep and they can run
  # this toolchain (in their home, or outside /root).
  if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] &&
    [ "$(stat -c %U .)" = "$SUDO_USER" ]; then
    case "$TOOLCHAIN_CARGO" in
      "$home"/*) TOOLCHAIN_BUILDER=$SUDO_USER ;;
      /root/*) ;;
      *) TOOLCHAIN_BUILDER=$SUDO_USER ;;
    esac
  fi
}

root_cargo() {
  env "${TOOLCHAIN_ENV[@]}" cargo "$@"
}

builder_cargo() {
  if [ -z "$TOOLCHAIN_BUILDER" ]; then
    root_cargo "$@"
  else
    runuser -u "$TOOLCHAIN_BUILDER" -- env "HOME=$(toolchain_home_of "$TOOLCHAIN_BUILDER")" \
      "${TOOLCHAIN_ENV[@]}" cargo "$@"
  fi
}

give_back_target() {
  [ -n "$TOOLCHAIN_BUILDER" ] || return 0
  local target=${CARGO_TARGET_DIR:-target}
  [ -d "$target" ] || return 0
  find "$target" -xdev ! -user "$TOOLCHAIN_BUILDER" -exec chown -h "$TOOLCHAIN_BUILDER": {} +
}
