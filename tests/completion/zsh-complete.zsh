#!/usr/bin/env zsh
# Prints, one a line, the matches zsh's completion system offers for a
# command line, as a user typing it and pressing TAB would get them.
#
#   zsh -f tests/completion/zsh-complete.zsh DIR 'rpcbind-proxy serve --'
#
# DIR holds the completion function (_rpcbind-proxy). zsh completes only in
# its line editor, so an interactive zsh runs on a pseudo-terminal (zpty):
# compinit loads DIR, `compadd` is wrapped to print each match instead of
# adding it (`compadd -A` gives the matches after zsh's own filtering by the
# prefix typed), and a marker line after the completion widget ends the read.
# Unbounded by itself: the caller runs it under timeout(1).
emulate -L zsh
zmodload zsh/zpty || exit 2
dir=$1 line=$2
zpty z zsh -f -i || exit 2
zpty -w z "PS1= PROMPT= RPS1=; setopt interactive_comments; unsetopt zle_bracketed_paste 2>/dev/null"
zpty -w z "fpath=(${(q)dir} \$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false; zstyle ':completion:*' insert-tab false"
zpty -w z 'compadd() {
  # Calls that only ask for matches (-O, -A, -D) pass through unchanged.
  local a
  for a in "$@"; do
    [[ $a == -- ]] && break
    [[ $a == -[OAD] ]] && { builtin compadd "$@"; return; }
  done
  local -a __hits
  builtin compadd -A __hits "$@"
  local h; for h in $__hits; do print -r -- "HIT"":$h"; done
}'
# The markers are written in two pieces so that the terminal's echo of these
# definitions never contains them.
zpty -w z 'finish() { print -r -- "END""MARK"; }; comppostfuncs=(finish)'
zpty -w z 'bindkey "^I" complete-word'
zpty -n -w z "$line"$'\t'
zpty -r z out '*ENDMARK*' || exit 2
zpty -d z
print -r -- "$out" | tr -d '\r' | sed -n 's/^.*HIT://p' | sort -u
