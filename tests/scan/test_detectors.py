"""Detectors and their look-alikes, line by line; policy judgement; special ranges."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from tests.scan.helpers import rows, scan

from shardvault.errors import ConfigError
from shardvault.scan import clipboard, endpoints
from shardvault.scan.engine import Limits, Scanner
from shardvault.scan.geo import place
from shardvault.scan.policy import Policy, parse_policy

# full-width letters, as an IDN host may be written
WIDE = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in "api.baidu.com")
DOMAINS = endpoints.domain_pattern(["baidu.com", "yandex.ru"])


def found(line: str, previous: str = "") -> list[tuple[str, str]]:
    return [
        (e.text, str(e.address) if e.address else str(e.host))
        for e in endpoints.find_endpoints(line, DOMAINS, previous)
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('u = "http://8.8.8.8:53/x"', [("http://8.8.8.8:53/x", "8.8.8.8")]),
        ('h = "8.8.8.8:53"', [("8.8.8.8", "8.8.8.8")]),
        (
            'u = "https://[2a00:1450:4001::1]:443/"',
            [("https://[2a00:1450:4001::1]:443/", "2a00:1450:4001::1")],
        ),
        ('x = "::ffff:8.8.8.8"', [("::ffff:8.8.8.8", "::ffff:808:808")]),
        ('ip = "77.88" + ".8.8";', [('"77.88" + ".8.8"', "77.88.8.8")]),
        (
            'u = "https://" + "api.baidu" + ".com/x"',
            [('"https://" + "api.baidu" + ".com/x"', "api.baidu.com")],
        ),
        ("hostAddr = 0x08080808", [("0x08080808", "8.8.8.8")]),
        ("connect(htonl(134744072))", [("134744072", "8.8.8.8")]),
        ("x = http://134744072/", [("http://134744072/", "8.8.8.8")]),
        # every IPv4 form inet_aton and browsers accept in a URL (they passed unseen)
        ('u = "http://0x4D.0x58.8.8/x"', [("http://0x4D.0x58.8.8/x", "77.88.8.8")]),
        ('u = "http://0115.0130.010.010/"', [("http://0115.0130.010.010/", "77.88.8.8")]),
        ('u = "http://77.88.2056/"', [("http://77.88.2056/", "77.88.8.8")]),
        ('u = "http://77.5769224:80/"', [("http://77.5769224:80/", "77.88.8.8")]),
        ("api.yandex.ru:443", [("api.yandex.ru", "api.yandex.ru")]),
        # internationalised hosts, as DNS sees them (they were no endpoint at all)
        ('u = "https://百度.com/x"', [("https://百度.com/x", "xn--wxtr44c.com")]),
        ('u = "https://api。baidu。com/"', [("https://api。baidu。com/", "api.baidu.com")]),
        (f'u = "https://{WIDE}"', [(f"https://{WIDE}", "api.baidu.com")]),
        ('u = "https://api.xn--fiqs8s/"', [("https://api.xn--fiqs8s/", "api.xn--fiqs8s")]),
        ('u = "http://77。88。8。8/"', [("http://77。88。8。8/", "77.88.8.8")]),
        ('const h = "api.evil.com"', [("api.evil.com", "api.evil.com")]),
        (
            'a = "2001:db8::1" + "77.88.8.8"',
            [("2001:db8::1", "2001:db8::1"), ("77.88.8.8", "77.88.8.8")],
        ),
    ],
)
def test_endpoints_found(line: str, expected: list[tuple[str, str]]) -> None:
    assert found(line) == expected
    assert Scanner(POLICY, Limits()).passes(line, "json")  # the pre-filter never hides them


def found_in(language: str, line: str) -> list[tuple[str, str]]:
    """What a file in ``language`` reports for ``line``: special ranges are never findings
    (``"http://77\\x2e..."`` also yields the stub ``http://77``, which is 0.0.0.77)."""
    return [
        (e.text, str(e.address) if e.address else str(e.host))
        for e in endpoints.find_endpoints(line, DOMAINS, language=language)
        if e.address is None or place(e.address).special is None
    ]


# Addresses hidden by escapes in a string literal, and literals the compiler joins
# (C, C++, Objective-C, Python, Dart): both passed as no endpoint at all.
HIDDEN = [
    ("c", r'u = "http://77\x2e88\x2e8\x2e8/";', [(r'"http://77\x2e88\x2e8\x2e8/"', "77.88.8.8")]),
    ("cpp", r'auto ip = "\x37\x37.88.8.8";', [(r'"\x37\x37.88.8.8"', "77.88.8.8")]),
    ("python", r'ip = "77\x2e88\x2e8\x2e8"', [(r'"77\x2e88\x2e8\x2e8"', "77.88.8.8")]),
    ("go", r'a := "77\x2e88\x2e8\x2e8:53"', [(r'"77\x2e88\x2e8\x2e8:53"', "77.88.8.8")]),
    (
        "javascript",
        r'fetch("http://77\x2e88\x2e8\x2e8/x")',
        [(r'"http://77\x2e88\x2e8\x2e8/x"', "77.88.8.8")],
    ),
    ("java", r'String ip = "\u0037\u0037.88.8.8";', [(r'"\u0037\u0037.88.8.8"', "77.88.8.8")]),
    ("kotlin", r'val ip = "\u0037\u0037.88.8.8"', [(r'"\u0037\u0037.88.8.8"', "77.88.8.8")]),
    ("typescript", r"const ip = '\u0037\u0037.88.8.8';", [(r"'\u0037\u0037.88.8.8'", "77.88.8.8")]),
    ("swift", r'let ip = "\u{37}\u{37}.88.8.8"', [(r'"\u{37}\u{37}.88.8.8"', "77.88.8.8")]),
    ("c", r'const char *ip = "77\05688\0568\0568";', [(r'"77\05688\0568\0568"', "77.88.8.8")]),
    ("json", r'"url": "http:\/\/api.evil.com/x"', [(r'"http:\/\/api.evil.com/x"', "api.evil.com")]),
    (
        "javascript",
        r'u = "https:\/\/api.evil.io/"',
        [(r'"https:\/\/api.evil.io/"', "api.evil.io")],
    ),
    ("c", 'const char *ip = "77.88." "8.8";', [('"77.88." "8.8"', "77.88.8.8")]),
    ("cpp", 'auto w = L"77.88."  L"8.8";', [('L"77.88."  L"8.8"', "77.88.8.8")]),
    (
        "cpp",
        'auto u = "https://" "api.baidu" ".com/x";',
        [('"https://" "api.baidu" ".com/x"', "api.baidu.com")],
    ),
    ("objc", 'NSString *ip = @"77.88." @"8.8";', [('@"77.88." @"8.8"', "77.88.8.8")]),
    ("objc", 'NSString *ip = @"77.88." "8.8";', [('@"77.88." "8.8"', "77.88.8.8")]),
    ("python", 'ip = ("77.88." "8.8")', [('"77.88." "8.8"', "77.88.8.8")]),
    ("python", "ip = '77.88.' '8.8'", [("'77.88.' '8.8'", "77.88.8.8")]),
    ("dart", "final ip = '77.88.' '8.8';", [("'77.88.' '8.8'", "77.88.8.8")]),
    ("python", r'ip = "77\x2e88" ".8.8"', [(r'"77\x2e88" ".8.8"', "77.88.8.8")]),
    (
        "javascript",
        r"fetch(`http://77\x2e88\x2e8\x2e8/`)",
        [(r"`http://77\x2e88\x2e8\x2e8/`", "77.88.8.8")],
    ),
    ("java", r'ip = "\u0037\u0037.88" + ".8.8";', [(r'"\u0037\u0037.88" + ".8.8"', "77.88.8.8")]),
]


@pytest.mark.parametrize(("language", "line", "expected"), HIDDEN)
def test_escaped_and_adjacent_literals_found(
    language: str, line: str, expected: list[tuple[str, str]]
) -> None:
    assert found_in(language, line) == expected
    assert Scanner(POLICY, Limits()).passes(line, language)  # the pre-filter lets them in


@pytest.mark.parametrize(
    ("language", "line"),
    [
        ("python", r'IP = re.compile("^77\.88\.8\.8$")'),  # a pattern, not an address
        ("python", r'IP = re.compile(r"(\d+)\.(\d+)\.(\d+)\.(\d+)")'),
        ("javascript", r"const ip = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;"),
        ("c", r'const char *p = "C:\\x\\y";'),
        ("python", r'p = "C:\\x2e\\1.2\\3.4"'),
        ("c", r'printf("%d.%d.%d.%d\n", a, b, c, d);'),
        ("c", r'printf("%u.%u" ".%u.%u\n", a[0], a[1], a[2], a[3]);'),
        ("c", 'const char *v = "1.2" "3.4";'),
        ("c", '#define VERSION_STRING "1.2" ".3.4"'),
        ("python", '__version__ = "1.2" ".3.4"'),
        ("java", 'String version = "1.2" + ".3.4";'),
        ("python", r'p = r"77\x2e88\x2e8\x2e8"'),  # a raw string keeps its backslashes
        ("go", r"p := `77\x2e88\x2e8\x2e8`"),  # so does a Go backtick string
        ("javascript", 'x = "77.88." "8.8"'),  # adjacent literals join in C and Python only
        ("go", 'x := "77.88." "8.8"'),
        ("xml", r"<a>77\x2e88\x2e8\x2e8</a>"),  # no escapes in XML text
        ("c", r'char nul = "\0"; puts("a" "b");'),
    ],
)
def test_escaped_and_adjacent_look_alikes(language: str, line: str) -> None:
    assert found_in(language, line) == []


def test_escapes_reach_the_report(tmp_path: Path) -> None:
    """The engine tells the detectors each file's language: a ``.c`` file's escapes and
    adjacent literals are undone, a ``.java`` file's adjacent literals are not joined."""
    (tmp_path / "net.c").write_text('int x;\nconst char *ip = "114.114." "114.114";\n')
    (tmp_path / "Net.java").write_text('class N {\n  String ip = "\\u0037\\u0037.88.8.8";\n}\n')
    assert sorted(rows(scan(tmp_path))) == [
        ("Net.java", 2, 15, "SV101", "RU"),
        ("net.c", 2, 18, "SV101", "CN"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        'version = "1.2.3.4"',
        'android:versionName="1.2.3.4"',
        "v1.2.3.4",
        'release "1.2.3.4-beta"',
        '"1.2.3.4-SNAPSHOT"',
        'implementation "com.foo:bar:1.2.3.4"',
        "oid = 1.3.6.1.4.1",
        "x = 1.2.3.4.5",
        "timeout = 134744072",  # a big integer with no network context
        "std::vector<int> v; at 12:30:45",
        "mac 00:1a:2b:3c:4d:5e",
        "import com.baidu.mapapi.Map",  # reversed package name, not a host
        "myapp://open",
        "file:///etc/hosts",
        "ip = 01.2.3.4",
    ],
)
def test_look_alikes_not_found(line: str) -> None:
    assert found(line) == []


def test_version_key_on_previous_line() -> None:
    assert found("<string>1.2.3.4</string>", "<key>CFBundleVersion</key>") == []
    assert found("<string>1.2.3.4</string>", "<key>Server</key>") == [("1.2.3.4", "1.2.3.4")]


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("10.1.2.3", "private"),
        ("172.20.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("192.0.2.1", "documentation (TEST-NET-1)"),
        ("198.51.100.1", "documentation (TEST-NET-2)"),
        ("203.0.113.1", "documentation (TEST-NET-3)"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "unique local (private)"),
        ("2001:db8::1", "documentation"),
        ("::ffff:10.0.0.1", "private"),
    ],
)
def test_special_ranges_are_named_not_placed(address: str, label: str) -> None:
    placement = place(ipaddress.ip_address(address))
    assert (placement.special, placement.country) == (label, None)


@pytest.mark.parametrize(
    ("address", "country"),
    [
        ("8.8.8.8", "US"),
        ("77.88.8.8", "RU"),
        ("114.114.114.114", "CN"),
        ("2a00:1450:4001::1", "IE"),
    ],
)
def test_public_addresses_are_placed_in_a_country(address: str, country: str) -> None:
    assert place(ipaddress.ip_address(address)).country == country


POLICY = parse_policy(
    {
        "version": 1,
        "jurisdictions": {"allowed": ["EU"], "disallowed": ["CN"]},
        "domains": {"allowed": ["home.eu"], "jurisdiction": {"baidu.com": "CN", "aws.com": "US"}},
    }
)


@pytest.mark.parametrize(
    ("country", "rule"),
    [("CN", "SV101"), ("US", "SV102"), (None, "SV102"), ("DE", "SV103"), ("FR", "SV103")],
)
def test_policy_judges_countries_with_groups(country: str | None, rule: str) -> None:
    assert POLICY.judge_country(country).rule_id == rule


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("api.baidu.com", "SV111"),
        ("s3.aws.com", "SV112"),
        ("unknown.org", "SV113"),
        ("api.home.eu", None),
        ("localhost", None),
        ("printer.local", None),
        ("www.example.com", None),
        ("schemas.android.com", None),
    ],
)
def test_policy_judges_hosts(host: str, rule: str | None) -> None:
    verdict, _ = POLICY.judge_host(host)
    assert (verdict.rule_id if verdict else None) == rule


def test_no_policy_reports_public_addresses_at_low() -> None:
    assert Policy().judge_country("CN").rule_id == "SV103"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": 0}, "this reader knows version 1"),  # 2: NewerFormat (tests/cli)
        ({"version": True}, "this reader knows version 1"),  # true == 1: it was read as version 1
        ({"version": 1.0}, "this reader knows version 1"),
        ({"version": 1, "jurisdictions": {"allowed": ["cn"]}}, "upper-case"),
        ({"version": 1, "jurisdictions": {"allowed": ["US"], "disallowed": ["US"]}}, "both"),
        ({"version": 1, "domain": {}}, "unknown key"),
        ({"version": 1, "domains": {"allowed": ["not a domain"]}}, "not a domain"),
        ({"version": 1, "scan": {"comments": "maybe"}}, "comments"),
    ],
)
def test_bad_policies_are_config_errors(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy(doc)


CLIPBOARD = [
    ("kotlin", "val c = cm.primaryClip", "SV201"),
    ("kotlin", "cm.primaryClip = ClipData.newPlainText(a, b)", "SV203"),
    ("java", "if (cm.hasPrimaryClip()) {", "SV201"),
    ("kotlin", "cm.addPrimaryClipChangedListener { }", "SV202"),
    ("java", "cm.setPrimaryClip(clip);", "SV203"),
    ("swift", "let s = UIPasteboard.general.string", "SV201"),
    ("swift", "let u = UIPasteboard.general.hasURLs", "SV201"),
    ("swift", 'UIPasteboard.general.string = "x"', "SV203"),
    ("swift", "let s = NSPasteboard.general.string(forType: .string)", "SV201"),
    (
        "objc",
        "NSString *s = [[NSPasteboard generalPasteboard] stringForType:NSPasteboardTypeString];",
        "SV201",
    ),
    ("objc", "NSString *s = [[UIPasteboard generalPasteboard] string];", "SV201"),
    ("typescript", "const t = await navigator.clipboard.read();", "SV201"),
    ("javascript", "el.onpaste = handler;", "SV202"),
    ("javascript", "navigator.clipboard.writeText(x)", "SV203"),
    ("dart", "await Clipboard.getData('text/plain')", "SV201"),
    ("javascript", "const s = await Clipboard.getStringAsync();", "SV201"),
    ("javascript", "Clipboard.setString(x)", "SV203"),
    ("python", "t = pyperclip.paste()", "SV201"),
    ("python", "root.clipboard_get()", "SV201"),
    ("python", "root.clipboard_append(t)", "SV203"),
    ("go", "s, _ := clipboard.ReadAll()", "SV201"),
]


@pytest.mark.parametrize(("language", "line", "rule"), CLIPBOARD)
def test_clipboard_uses(language: str, line: str, rule: str) -> None:
    uses = clipboard.find_clipboard(line, language)
    assert [u.rule_id for u in uses] == [rule]


@pytest.mark.parametrize(("language", "line", "rule"), CLIPBOARD)
def test_prefilter_passes_every_clipboard_line(language: str, line: str, rule: str) -> None:
    assert Scanner(Policy(), Limits()).passes(line, language)


@pytest.mark.parametrize(
    ("language", "line"),
    [
        ("java", "String s = bundle.getData(key);"),
        ("dart", "final d = repo.getData();"),
        ("javascript", "const t = reader.readText();"),
        ("python", "df = pandas.read_clipboard"),  # no call, and not a clipboard API we name
        ("kotlin", "val clip = ClipData.newPlainText(a, b)"),
    ],
)
def test_clipboard_look_alikes(language: str, line: str) -> None:
    assert clipboard.find_clipboard(line, language) == []


def test_clipboard_api_of_another_platform_is_ignored() -> None:
    assert clipboard.find_clipboard("s, _ := clipboard.ReadAll()", "kotlin") == []


ADVERSARIAL = [
    ("swift", "let p = pasteboard" + " " * 19_000 + "x"),
    ("objc", "[UIPasteboard generalPasteboard]" + "\t" * 19_000 + ";"),
    ("c", '"7." ' * 4_000),  # one run of 4,000 literals the compiler joins
    ("objc", '@"8.8.8.8" ' * 1_800),  # each literal an address, and all joined
    ("python", r'"\x2e\\' * 3_000 + '"'),
]


@pytest.mark.parametrize(("language", "line"), ADVERSARIAL)
def test_adversarial_lines_take_linear_time(language: str, line: str) -> None:
    """A line of whitespace after ``pasteboard`` took 8 s (quadratic backtracking in
    ``\\s*[.\\s]\\s*``): an 8 MiB file of such lines would hold a CI gate for hours."""
    started = time.perf_counter()
    clipboard.find_clipboard(line, language)
    endpoints.find_endpoints(line)
    endpoints.find_endpoints(line, language=language)
    assert time.perf_counter() - started < 0.5
