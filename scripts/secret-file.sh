# Sourced by the server scripts (which define `die`): checks on files that hold secrets.

# A secret file must be the invoking user's, readable and writable by that user only.
check_private() {
    local mode owner
    mode="$(stat -c %a "$1")" owner="$(stat -c %u "$1")"
    [ "$owner" = "$(id -u)" ] || die "$1 belongs to uid $owner, not to you (uid $(id -u))"
    case "$mode" in
    600 | 400) ;;
    *) die "$1 is mode $mode: it holds a secret and must be readable by its owner only (chmod 600 $1)" ;;
    esac
}
