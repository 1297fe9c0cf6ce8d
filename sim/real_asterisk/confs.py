"""The run directory of one real Asterisk: asterisk.conf pointing every directory into it, the project's own
deploy/asterisk confs (the files users copy, with a fresh password and port), and the few minimal confs
Asterisk needs besides."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sim.real_asterisk.install import Installation, RealAsteriskUnavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "asterisk"
SHIPPED_APP = "asterisk-ai-voice-agent"  # the Stasis app of deploy/asterisk/extensions_custom.conf
HARNESS_APP = "va-harness"
# Contexts of the harness's own, for calls the tests place: ARI originates Local/s@<context> with app=<test app>.
HARNESS_DIALPLAN = """\
; The test harness's own contexts (not part of deploy/asterisk).
[va-harness-wait]
exten => s,1,Answer()
 same => n,Wait(60)
 same => n,Hangup()

[va-harness-echo]
exten => s,1,Answer()
 same => n,Echo()
 same => n,Hangup()
"""
# An explicit list (autoload off) starts faster and the same way every time. app_voicemail only: its _odbc and
# _imap twins register the same applications and clash with it.
MODULES = """
res_timing_timerfd res_sorcery_config res_sorcery_memory res_sorcery_astdb
pbx_config func_channel func_strings func_logic func_callerid func_cut func_global func_hangupcause func_timeout
func_uuid func_db res_http_websocket res_stasis res_stasis_answer res_stasis_playback res_stasis_recording
res_stasis_snoop res_stasis_device_state res_ari res_ari_model res_ari_applications res_ari_asterisk
res_ari_bridges res_ari_channels res_ari_device_states res_ari_endpoints res_ari_events res_ari_playbacks
res_ari_recordings res_ari_sounds app_stasis chan_bridge_media bridge_simple bridge_softmix bridge_native_rtp
bridge_holding bridge_builtin_features bridge_builtin_interval_features res_pjproject res_rtp_asterisk
res_rtp_multicast chan_rtp
res_audiosocket chan_audiosocket app_audiosocket res_websocket_client chan_websocket app_dial app_playback
app_record app_mixmonitor app_voicemail res_musiconhold app_echo app_milliwatt app_senddtmf app_stack
app_verbose res_clioriginate format_wav format_pcm format_sln codec_ulaw codec_alaw codec_a_mu codec_resample
""".split()


@dataclass(frozen=True)
class RunConfig:
    run_dir: Path
    http_port: int
    rtp_ports: tuple[int, int]
    user: str
    password: str

    @property
    def conf(self) -> Path:
        return self.run_dir / "etc" / "asterisk.conf"


def write_run_dir(inst: Installation, cfg: RunConfig) -> None:
    """Create cfg.run_dir from scratch: its confs and directories, with links into the installed prefix."""
    run = cfg.run_dir
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(mode=0o700, parents=True)  # ari.conf and state.json hold the ARI password
    for sub in ("etc", "lib", "spool/recording", "run", "log", "data/sounds"):  # ARI records into spool/recording
        (run / sub).mkdir(parents=True)
    # What the package's install scripts would link and dpkg -x does not: the en voice, the MOH files, and the
    # swagger that ARI serves under /ari/api-docs.
    voices = sorted(inst.share.glob("sounds/en_US*"))
    if not voices:
        raise RealAsteriskUnavailable(f"no English sounds under {inst.share / 'sounds'} (asterisk-core-sounds-en-wav)")
    (run / "data/sounds/en").symlink_to(voices[0])
    for name in ("moh", "rest-api", "documentation"):
        (run / "data" / name).symlink_to(inst.share / name)
    etc = run / "etc"
    files = {
        "asterisk.conf": _asterisk_conf(inst, run),
        "modules.conf": "[modules]\nautoload = no\n" + "".join(f"load = {m}.so\n" for m in MODULES),
        "logger.conf": "[general]\ndateformat = %F %T.%3q\n[logfiles]\n"
        "messages.log => notice,warning,error\nfull.log => notice,warning,error,verbose,dtmf\n",
        "ari.conf": _ari_conf(cfg),
        "http.conf": _sub(DEPLOY / "http.conf", r"^bindport\s*=\s*\d+", f"bindport = {cfg.http_port}"),
        "extensions.conf": "[general]\nstatic = yes\nwriteprotect = yes\n\n[globals]\n\n"
        "#include extensions_custom.conf\n#include extensions_plain_asterisk.conf\n"
        "#include extensions_harness.conf\n",
        "extensions_custom.conf": (DEPLOY / "extensions_custom.conf").read_text(),
        "extensions_plain_asterisk.conf": (DEPLOY / "extensions_plain_asterisk.conf").read_text(),
        "extensions_harness.conf": HARNESS_DIALPLAN,
        "voicemail.conf": "[general]\nformat = wav\nattach = no\n\n[default]\n100 => 1234,Harness Mailbox\n",
        "musiconhold.conf": f"[default]\nmode = files\ndirectory = {run / 'data/moh'}\nsort = alpha\n",
        "rtp.conf": f"[general]\nrtpstart = {cfg.rtp_ports[0]}\nrtpend = {cfg.rtp_ports[1]}\n",
        # No CDR/CEL backend is loaded: say so, instead of an error at every start.
        "cdr.conf": "[general]\nenable = no\n",
        "cel.conf": "[general]\nenable = no\n",
    }
    # Defaults are right for these; an empty file keeps "Unable to load config file" out of the log.
    for name in (
        "features.conf",
        "acl.conf",
        "udptl.conf",
        "ccss.conf",
        "stasis.conf",
        "pjproject.conf",
        "websocket_client.conf",
        "chan_websocket.conf",
    ):
        files[name] = ""
    for name, text in files.items():
        (etc / name).write_text(text)
    if (inst.prefix / "etc/asterisk/indications.conf").exists():  # ringback/busy tones as the package ships them
        shutil.copy(inst.prefix / "etc/asterisk/indications.conf", etc / "indications.conf")


def _asterisk_conf(inst: Installation, run: Path) -> str:
    dirs = {
        "astetcdir": run / "etc",
        "astmoddir": inst.modules_dir,
        "astvarlibdir": run / "lib",
        "astdbdir": run / "lib",
        "astkeydir": run / "lib",
        "astdatadir": run / "data",
        "astagidir": run / "data/agi-bin",
        "astspooldir": run / "spool",
        "astrundir": run / "run",
        "astlogdir": run / "log",
        "astsbindir": inst.prefix / "usr/sbin",
    }
    # No runuser/rungroup: Asterisk runs as whoever starts it (dpkg -x made no asterisk user).
    return (
        "[directories]\n"
        + "".join(f"{k} => {v}\n" for k, v in dirs.items())
        + "\n[options]\nverbose = 3\ntranscode_via_sln = yes\nhideconnect = yes\nnocolor = yes\n"
    )


def _ari_conf(cfg: RunConfig) -> str:
    text = _sub(DEPLOY / "ari.conf", r"^password\s*=\s*CHANGE_ME\S*", f"password = {cfg.password}")
    return text.replace("127.0.0.1:8088", f"127.0.0.1:{cfg.http_port}")  # allowed_origins follows the port


def _sub(path: Path, pattern: str, replacement: str) -> str:
    """The file's text with the one line matching `pattern` replaced; an error when it is missing, so a changed
    deploy/asterisk file fails here, not as a mysterious Asterisk that never answers."""
    new, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    if count != 1:
        raise RealAsteriskUnavailable(f"{path}: expected one line matching {pattern!r}, found {count}")
    return new


def ari_user() -> str:
    """The one ARI user the shipped ari.conf defines (the password placeholder is its)."""
    found = re.findall(r"^\[([^\]]+)\]\s*\n(?:[^\[]*?)^type\s*=\s*user", (DEPLOY / "ari.conf").read_text(), re.M)
    if len(found) != 1:
        raise RealAsteriskUnavailable(f"{DEPLOY / 'ari.conf'}: expected one ARI user, found {found}")
    return found[0]
