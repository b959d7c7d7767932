"""The FFmpeg option policy: common options pass; anything that names a file or protocol is refused."""
import pytest

from ffleet.policy import OptionPolicyError, parse_options

VALID = [
    "-ac 1 -ar 48000",
    "-c:a libopus -b:a 64k",
    "-c:a flac -sample_fmt s16",
    "-map 0:a:0 -vn",
    "-t 30 -ss 5",
    "-ss 00:00:05.5 -to 00:01:00",
    "-threads 2 -loglevel error",
    "-af loudnorm=I=-16:TP=-1.5:LRA=11",
    "-filter:a 'aresample=16000,pan=mono|c0=FL'",
    "-af \"highpass=f=80, lowpass=f=8000\"",
    "-c:v libx264 -preset fast -crf 23 -b:v 2M",
    "-vf scale=1280:-2",
    "-c:v h264_nvenc -preset p4 -b:v 5M",
    "-f flac",
    "-metadata title='A song: file of mine'",
    "-filter_complex '[0:a]asplit=2[a][b];[a][b]amix=inputs=2'",
    "",
]


@pytest.mark.parametrize("options", VALID)
def test_common_options_pass(options):
    assert isinstance(parse_options(options), list)


def test_tokens_keep_quoted_values_whole():
    assert parse_options("-af 'volume=0.5, aresample=16000'") == ["-af", "volume=0.5, aresample=16000"]


REFUSED = [
    # (options, the token the message must name, a word the reason must contain)
    ("/etc/passwd", "/etc/passwd", "bare word"),
    ("-ac 1 extra.wav", "extra.wav", "bare word"),
    ("-i /etc/passwd", "-i", "input"),
    ("-i:0 x", "-i:0", "input"),
    ("-protocol_whitelist file,http", "-protocol_whitelist", "protocol"),
    ("-vstats_file /tmp/x", "-vstats_file", "allowlist"),
    ("-passlogfile /tmp/x", "-passlogfile", "allowlist"),
    ("-dump_attachment:t out.ttf", "-dump_attachment:t", "allowlist"),
    ("-attach font.ttf", "-attach", "allowlist"),
    ("-report", "-report", "allowlist"),
    ("-progress http://evil/", "-progress", "allowlist"),
    ("-filter_complex_script /tmp/f", "-filter_complex_script", "allowlist"),
    ("-af amovie=/etc/passwd", "amovie", "filter"),
    ("-vf movie=secret.mp4[m];[in][m]overlay", "movie", "filter"),
    ("-lavfi 'amovie=x.wav'", "amovie", "filter"),
    ("-vf \"drawtext=textfile=/etc/passwd\"", "drawtext", "filter"),
    ("-af 'mo\\vie=/etc/passwd'", "movie", "filter"),  # FFmpeg unescapes names: so do we
    ("-af asendcmd=f=/tmp/cmds", "asendcmd", "filter"),
    ("-vf subtitles=/etc/passwd", "subtitles", "filter"),
    ("-af sofalizer=sofa=/x.sofa", "sofalizer", "filter"),
    ("-af 'ametadata=mode=print:file=/tmp/leak'", "ametadata", "filter"),
    ("-af afftdn=file=/tmp/x", "afftdn=file", "file"),
    ("-c:a copy -f tee", "tee", "format"),
    ("-f segment", "segment", "format"),
    ("-f hls", "hls", "format"),
    ("-f 'wav;rm -rf /'", "wav;rm -rf /", "format name"),
    ("-metadata title=x -c:a pipe:1", "pipe:1", "protocol"),
    ("-ss concat:a.wav|b.wav", "concat:a.wav|b.wav", "protocol"),
    ("-af aresample=http://x/", "aresample=http://x/", "protocol"),
    ("-x264-params stats=/tmp/x.log", "stats=/tmp/x.log", "files"),
    ("-ac", "-ac", "expects a value"),
    ("-ac 1 'unclosed", "'unclosed", "cannot be split"),
    ("-", "-", "bare word"),
]


@pytest.mark.parametrize("options,token,word", REFUSED)
def test_refusals_name_the_token(options, token, word):
    with pytest.raises(OptionPolicyError) as exc:
        parse_options(options)
    msg = str(exc.value)
    assert token in msg, msg
    assert word in msg, msg


def test_refusal_reaches_the_request_field():
    from ffleet.request import RequestError, parse_request

    with pytest.raises(RequestError) as exc:
        parse_request({"name": "x", "input": {"s3_bucket": "a", "s3_prefix": "p/", "file_options": "-i /etc/passwd"},
                       "output": {"s3_bucket": "b"}, "global": {"options": "-vstats_file /tmp/v"}})
    fields = dict(exc.value.problems)
    assert "-i" in fields["input.file_options"]
    assert "-vstats_file" in fields["global.options"]


def test_option_pairs_never_takes_a_value_for_a_flag():
    from ffleet.policy import option_pairs

    tokens = parse_options("-metadata -ss -vn -c:a flac -t 5")
    assert list(option_pairs(tokens)) == [("-metadata", "-ss"), ("-vn", None), ("-c:a", "flac"), ("-t", "5")]
