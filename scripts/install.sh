#!/usr/bin/env bash
# Installs lsd-tui under a prefix: the binary, its loss plugins (which it
# finds in <prefix>/lib/lsd-tui/plugins), shell completions and man pages.
#
#   scripts/install.sh                          # cargo build --release, then into ~/.local
#   scripts/install.sh --prefix /opt/lsd-tui    # anywhere; add <prefix>/bin to PATH
#   scripts/install.sh --from dist/cuda         # an already-built binary and plugins
#                                               # (scripts/cuda/build.sh writes dist/cuda)
#
# Layout: bin/lsd-tui, lib/lsd-tui/plugins/liblsd_plugin_*.so,
# share/man/man1/lsd-tui*.1, share/bash-completion/completions/lsd-tui,
# share/zsh/site-functions/_lsd-tui, share/fish/vendor_completions.d/lsd-tui.fish.
set -euo pipefail

prefix="${HOME:?HOME is unset; give --prefix}/.local"
from=""
while (($#)); do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a folder}; shift 2 ;;
        --from) from=${2:?--from needs a folder}; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
if [[ -z $from ]]; then
    cargo build --release --locked
    from=target/release
fi
bin="$from/lsd-tui"
[[ -x $bin ]] || { echo "install.sh: no executable '$bin'; build first or give --from DIR" >&2; exit 1; }
shopt -s nullglob
plugins=("$from"/liblsd_plugin_*.so "$from"/liblsd_plugin_*.dylib)
((${#plugins[@]})) || { echo "install.sh: no plugin libraries (liblsd_plugin_*) in '$from'" >&2; exit 1; }

share="$prefix/share"
install -d "$prefix/bin" "$prefix/lib/lsd-tui/plugins" "$share/man/man1" \
    "$share/bash-completion/completions" "$share/zsh/site-functions" "$share/fish/vendor_completions.d"
install -m 755 "$bin" "$prefix/bin/lsd-tui"
install -m 755 "${plugins[@]}" "$prefix/lib/lsd-tui/plugins/"
installed="$prefix/bin/lsd-tui"
"$installed" completions bash > "$share/bash-completion/completions/lsd-tui"
"$installed" completions zsh > "$share/zsh/site-functions/_lsd-tui"
"$installed" completions fish > "$share/fish/vendor_completions.d/lsd-tui.fish"
"$installed" man --dir "$share/man/man1" > /dev/null

echo "installed lsd-tui and ${#plugins[@]} plugin(s) under $prefix"
case ":${PATH}:" in
    *":$prefix/bin:"*) ;;
    *) echo "add $prefix/bin to PATH (and $share/man to MANPATH if man does not find lsd-tui)" ;;
esac
