"""reply: the new text of a reply, without quoted history or signature.

Measured on corpora/github-erp (22 bodies): 11 of the 11 with an exact expected text are
exactly right (`visible_text`, `visible_text_derived`, or a body that is one fragment),
and all 22 keep every fragment upstream shows and drop the history and signatures after it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supportd.mail.reply import strip_quoted_reply

EXACTLY_RIGHT_AT_LEAST = 11


def erp_cases(corpora: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(file name, body, expectations) for every body in corpora/github-erp."""
    folder = corpora / "github-erp"
    if not folder.is_dir():
        pytest.skip(f"corpus folder not found at {folder}")
    files = json.loads((folder / "expectations.json").read_text(encoding="utf-8"))["files"]
    return [
        (name, (folder / "test" / "emails" / name).read_text(encoding="utf-8"), expected)
        for name, expected in sorted(files.items())
    ]


def rstrip_lines(text: str) -> str:
    """Upstream compares text with each line's trailing blanks removed, then rstrip."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in normalised.split("\n")).rstrip()


def exact_expectation(body: str, expected: dict[str, Any]) -> str | None:
    """The exact visible text the expectations give, or None where they give only fragments."""
    text = expected.get("visible_text", expected.get("visible_text_derived"))
    if text is not None:
        return str(text).rstrip()
    if expected.get("fragment_count") == 1:
        return rstrip_lines(body)
    return None


def hidden_flags(expected: dict[str, Any]) -> list[bool]:
    """Per fragment; where upstream lists none, fragment 0 is the reply and the rest history."""
    if "hidden" in expected:
        return [bool(flag) for flag in expected["hidden"]]
    indexes = {
        int(index)
        for key in ("fragment_equals", "fragment_matches", "fragment_contains")
        for index in expected.get(key, {})
    }
    return [index > 0 for index in range(max(indexes, default=0) + 1)]


def fragment_problems(result: str, expected: dict[str, Any]) -> list[str]:
    """What the result lacks of the shown fragments or keeps of the trailing hidden ones."""
    hidden = hidden_flags(expected)
    last_visible = max((i for i, flag in enumerate(hidden) if not flag), default=-1)
    problems = []
    for index, flag in enumerate(hidden):
        shown = not flag
        dropped = index > last_visible
        key = str(index)
        equals = expected.get("fragment_equals", {}).get(key)
        contains = expected.get("fragment_contains", {}).get(key)
        pattern = expected.get("fragment_matches", {}).get(key)
        for needle in (equals, contains):
            if needle is None or not needle.strip():
                continue
            needle = rstrip_lines(needle)
            if shown and needle not in result:
                problems.append(f"fragment {index} missing: {needle!r}")
            if dropped and needle in result:
                problems.append(f"fragment {index} kept: {needle!r}")
        if pattern is not None and shown and not re.search(pattern, result, re.MULTILINE):
            problems.append(f"fragment {index} does not match {pattern!r}")
    return problems


# --- the corpus ---------------------------------------------------------------------


def test_corpus_bodies_with_an_exact_expectation_stay_exactly_right(corpora: Path) -> None:
    right, wrong = [], []
    for name, body, expected in erp_cases(corpora):
        want = exact_expectation(body, expected)
        if want is not None:
            (right if strip_quoted_reply(body) == want else wrong).append(name)
    assert len(right) >= EXACTLY_RIGHT_AT_LEAST, f"wrong: {wrong}"


def test_corpus_bodies_keep_shown_fragments_and_drop_trailing_history(corpora: Path) -> None:
    problems = {
        name: found
        for name, body, expected in erp_cases(corpora)
        if (found := fragment_problems(strip_quoted_reply(body), expected))
    }
    assert problems == {}


def test_corpus_pathological_sample_keeps_only_the_two_reply_lines(corpora: Path) -> None:
    body = dict((name, text) for name, text, _ in erp_cases(corpora))["pathological.txt"]
    assert strip_quoted_reply(body) == (
        "I think you're onto something. I will try to fix the problem as soon as I\n"
        "get back to a computer."
    )


def test_corpus_long_quote_keeps_text_around_the_inner_quote_and_drops_sign_off(
    corpora: Path,
) -> None:
    body = dict((name, text) for name, text, _ in erp_cases(corpora))["email_long_quote.txt"]
    before_sign_off = body[: body.index("\n\n-Abhishek Kona")]
    result = strip_quoted_reply(body)
    assert result == before_sign_off
    assert result.endswith("I am currently using the Java HTTP API.")


# --- line endings -------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_endings_are_normalised(newline: str) -> None:
    body = newline.join(["Fine by me.", "", "On Tue, 3 Jan 2023, Bo <bo@x.example> wrote:", "> hi"])
    assert strip_quoted_reply(body) == "Fine by me."


def test_trailing_whitespace_is_stripped_from_lines_and_end() -> None:
    assert strip_quoted_reply("Yes   \nplease  \n\n\n") == "Yes\nplease"


# --- attributions ("On ... wrote:") -------------------------------------------------


def test_top_posted_reply_drops_attribution_and_quote() -> None:
    body = (
        "Thanks, that worked.\n\n"
        "On Mon, Jan 2, 2023 at 9:00 AM Ann <ann@x.example> wrote:\n> Try a reboot.\n"
    )
    assert strip_quoted_reply(body) == "Thanks, that worked."


def test_attribution_wrapped_over_three_lines_is_dropped() -> None:
    body = (
        "Works now.\n\nOn Dec 16, 2011, at 12:47 PM, Corey Donohoe\n<reply@x.example>\nwrote:\n\n"
        "> Was this fixed?\n"
    )
    assert strip_quoted_reply(body) == "Works now."


def test_greeting_above_a_wrapped_attribution_stays() -> None:
    body = "Hi,\nOn Tue, 1 Mar 2011 at 18:02 +0530, Ann\n<ann@x.example> wrote:\n> q\n\nanswer\n"
    assert strip_quoted_reply(body) == body.rstrip()


@pytest.mark.parametrize(
    "attribution",
    [
        "Le lun. 15 janv. 2025 à 17:03, Anna Andersson <anna@x.example>\na écrit :",
        "Am Mo., 15. Jan. 2025 um 17:03 Uhr schrieb Anna Andersson <\nanna@x.example>:",
        "El lun, 15 ene 2025 a las 17:03, Anna Andersson (<anna@x.example>)\nescribió:",
        "Op ma 15 jan. 2025 om 17:03 schreef Anna Andersson <anna@x.example>:",
        "Il giorno lun 15 gen 2025 alle ore 17:03 Anna <anna@x.example> ha scritto:",
        "Em seg., 15 de jan. de 2025 às 17:03, Anna <anna@x.example> escreveu:",
        "W dniu 15.01.2025 o 17:03, Anna <anna@x.example> pisze:",
        "ons 15 jan. 2025 kl. 17:03 skrev Anna Andersson <anna@x.example>:",
        "Anna <anna@x.example> 于2025年1月15日周三 17:03写道\N{FULLWIDTH COLON}",
        "2025年1月15日(水) 17:03 アンナ <anna@x.example>:",
    ],
)
def test_attributions_in_other_languages_start_the_quote(attribution: str) -> None:
    body = f"Neue Antwort.\n\n{attribution}\n\n> Alte Nachricht\n> zweite Zeile\n"
    assert strip_quoted_reply(body) == "Neue Antwort."


def test_attribution_followed_by_unquoted_history_cuts_the_rest() -> None:
    body = (
        "Koszonom, rendben.\n\n"
        "Support <support@x.example> ezt írta (időpont: 2026. aug. 16., Ke 12:27):\n"
        "Kedves Anna,\n\nA szolgaltatas ujra elerheto.\n"
    )
    assert strip_quoted_reply(body) == "Koszonom, rendben."


def test_bare_attribution_above_a_quote_is_dropped() -> None:
    assert strip_quoted_reply("Agreed.\n\nAnn wrote:\n> Shall we?\n") == "Agreed."


def test_sentence_ending_in_wrote_colon_at_the_end_is_text() -> None:
    body = "Thanks for the update.\n\nI agree with what Ann wrote:"
    assert strip_quoted_reply(body) == body


def test_sentence_starting_with_on_and_ending_with_colon_is_text() -> None:
    body = "On your remote host you can run:\n\n    telnet 127.0.0.1 52698\n\nThen retry."
    assert strip_quoted_reply(body) == body


def test_prose_ending_with_colon_is_not_taken_for_unquoted_history() -> None:
    body = "On Monday Bob wrote:\n\nhe will call back. Please wait for him."
    assert strip_quoted_reply(body) == body


# --- Outlook headers, separators, forwards ------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "From: Ann <ann@x.example>\nSent: Friday, 23 March 2012 5:08 p.m.\nTo: Bo\nSubject: Hi",
        "*From:* Ann [mailto:ann@x.example]\n*Sent:* Thursday, February 09, 2012 1:36 PM",
        "De : Ann <ann@x.example>\nEnvoyé : vendredi 23 mars 2012 17:08\nÀ : Bo\nObjet : Salut",
        "Von: Ann <ann@x.example>\nGesendet: Freitag, 23. März 2012 17:08\nAn: Bo\nBetreff: Hallo",
        "De: Ann <ann@x.example>\nEnviado: viernes, 23 de marzo de 2012 17:08\nPara: Bo",
        "Van: Ann <ann@x.example>\nVerzonden: vrijdag 23 maart 2012 17:08\nAan: Bo",
        "Fra: Ann <ann@x.example>\nSendt: 24. november 2025 09:30\nTil: Bo\nEmne: Filerne",
        "发件人: Ann <ann@x.example>\n发送时间: 2012年3月23日 17:08\n收件人: Bo",
    ],
)
def test_outlook_header_block_starts_the_history(header: str) -> None:
    body = f"Reply above the header.\n\n{header}\n\nThe original message, not quoted.\n"
    assert strip_quoted_reply(body) == "Reply above the header."


def test_underscore_separator_directly_above_outlook_header_is_dropped() -> None:
    body = (
        "Reply directly above line\n________________________________\nFrom: Ann\nSent: today\n\nold"
    )
    assert strip_quoted_reply(body) == "Reply directly above line"


def test_lone_from_line_in_text_is_kept() -> None:
    body = "Name: Ann\nFrom: Paris\nFlight: AF123\n\nPlease rebook me."
    assert strip_quoted_reply(body) == body


@pytest.mark.parametrize(
    "separator",
    [
        "-----Original Message-----",
        "-----Ursprüngliche Nachricht-----",
        "-------- Message d'origine --------",
        "---------- Forwarded message ---------",
        "Begin forwarded message:",
    ],
)
def test_original_message_and_forward_separators_start_the_history(separator: str) -> None:
    body = f"See below.\n\n{separator}\nOld text\nthat was not quoted\n"
    assert strip_quoted_reply(body) == "See below."


def test_mail_that_is_only_a_forward_is_kept_whole() -> None:
    body = (
        "---------- Forwarded message ---------\nFrom: Ann <ann@x.example>\nDate: today\n\nBroken"
    )
    assert strip_quoted_reply(body) == body


# --- signatures ---------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", ["-- ", "--"])
def test_signature_under_a_dash_dash_delimiter_is_dropped(delimiter: str) -> None:
    assert strip_quoted_reply(f"Done.\n\n{delimiter}\nRick\nACME Support") == "Done."


def test_dash_dash_inside_a_line_is_text() -> None:
    body = "Here is a fix -- this is not a signature.\n\nkthxbai"
    assert strip_quoted_reply(body) == body


def test_mailing_list_footer_under_underscores_is_dropped() -> None:
    body = "Question?\n\n\n_______________________________________________\nlist mailing list\nhttp://x"
    assert strip_quoted_reply(body) == "Question?"


def test_dashes_underlining_a_heading_are_text() -> None:
    body = "Summary\n----------\nThe disk is full."
    assert strip_quoted_reply(body) == body


@pytest.mark.parametrize(
    "line",
    [
        "Sent from my iPhone",
        "Sent from my Verizon Wireless BlackBerry",
        "Get Outlook for Android",
        "Von meinem iPhone gesendet",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
        "Verzonden vanaf mijn iPad",
    ],
)
def test_mobile_signature_line_is_dropped(line: str) -> None:
    assert strip_quoted_reply(f"Here is another email\n\n{line}\n") == "Here is another email"


def test_sentence_beginning_with_sent_from_my_is_text() -> None:
    body = "Here is another email\n\nSent from my desk, is much easier than my phone."
    assert strip_quoted_reply(body) == body


def test_mobile_signature_above_the_quote_is_dropped() -> None:
    body = "Ok.\n\nSent from my iPhone\n\nOn 2 Jan 2023, at 10:00, Ann <ann@x.example> wrote:\n> q"
    assert strip_quoted_reply(body) == "Ok."


def test_dash_name_sign_off_at_the_end_is_dropped() -> None:
    assert strip_quoted_reply("Having it would be great.\n\n-Abhishek Kona\n") == (
        "Having it would be great."
    )


def test_bullets_at_the_end_are_kept() -> None:
    body = "Steps:\n\n- reboot\n- retry"
    assert strip_quoted_reply(body) == body


def test_written_sign_off_is_kept_for_the_customer() -> None:
    body = "We fixed it.\n\nBest regards,\nAlice"
    assert strip_quoted_reply(body) == body


# --- inline answers and fallbacks ---------------------------------------------------


def test_inline_answers_between_quotes_are_kept() -> None:
    body = (
        "On Tue, Apr 29, 2014 at 4:22 PM, Ann <ann@x.example> wrote:\n\n"
        "> First question?\n\nFirst answer.\n\n> Second question?\n\nSecond answer.\n\n"
        "> Thanks\n> Ann\n\n--\nBo\n"
    )
    assert strip_quoted_reply(body) == (
        "On Tue, Apr 29, 2014 at 4:22 PM, Ann <ann@x.example> wrote:\n\n"
        "> First question?\n\nFirst answer.\n\n> Second question?\n\nSecond answer."
    )


def test_top_quote_followed_by_new_text_keeps_the_new_text() -> None:
    body = "> Can you send the log?\n\nAttached, see line 12.\n"
    assert strip_quoted_reply(body) == "> Can you send the log?\n\nAttached, see line 12."


def test_reply_that_is_all_quote_is_returned_as_is() -> None:
    body = "On 2 Jan 2023, Ann <ann@x.example> wrote:\n> only the old text\n"
    assert strip_quoted_reply(body) == body.rstrip()


def test_nested_attribution_inside_a_quote_does_not_cut_the_reply() -> None:
    body = "> On 1 Jan 2023, Bo <bo@x.example> wrote:\n> > old\n> newer\n\nMy answer."
    assert strip_quoted_reply(body) == body


def test_empty_text_stays_empty() -> None:
    assert strip_quoted_reply("") == ""


def test_huge_quote_line_and_many_attribution_lookalikes_are_handled() -> None:
    lookalike = "On 1 Jan 2023, Ann <ann@x.example> wrote: " + "a: " * 60 + "\n"
    body = "Top\n" + ">" * 500_000 + "\n" + lookalike * 20_000 + "End"
    assert strip_quoted_reply(body) == rstrip_lines(body)


@given(st.text(alphabet=st.sampled_from("ab >-_:\n\r@1On wrote"), max_size=200))
def test_result_is_a_prefix_of_the_text_and_never_empty_when_text_has_words(text: str) -> None:
    result = strip_quoted_reply(text)
    whole = rstrip_lines(text)
    assert whole.startswith(result)
    assert bool(result) == bool(whole)
