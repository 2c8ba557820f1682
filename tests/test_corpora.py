"""Corpus loaders: file-name conventions, auto-detection, emotion subsets, speaker ids."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipser.data.corpora import (
    CONVENTIONS,
    detect_convention,
    find_audio_files,
    load_corpus,
    normalize_speaker_ids,
    parse_emotions,
)
from gossipser.errors import ConfigError, CorpusError

# (corpus, file relative to the root, speaker, emotion)
EXAMPLES = [
    ("ravdess", "Actor_12/03-01-05-02-01-02-12.wav", "12", "angry"),
    ("ravdess", "Actor_01/03-01-01-01-01-01-01.flac", "01", "neutral"),
    ("ravdess", "Actor_24/03-02-06-01-02-01-24.wav", "24", "fearful"),
    ("cremad", "AudioWAV/1001_DFA_ANG_XX.wav", "1001", "angry"),
    ("cremad", "AudioWAV/1091_TIE_FEA_HI.wav", "1091", "fearful"),
    ("cremad", "AudioWAV/1045_IEO_NEU_X.wav", "1045", "neutral"),
    ("tess", "OAF_angry/OAF_back_angry.wav", "OAF", "angry"),
    ("tess", "YAF_pleasant_surprised/YAF_dog_ps.wav", "YAF", "surprised"),
    ("tess", "YAF_fear/YAF_bath_Fear.wav", "YAF", "fearful"),
    ("tess", "x/oaf_Germ_pleasant_surprise.WAV", "OAF", "surprised"),
    ("emodb", "wav/03a01Fa.wav", "03", "happy"),
    ("emodb", "wav/16b10Wb.wav", "16", "angry"),
    ("emodb", "wav/08a02A.wav", "08", "fearful"),
    ("emodb", "wav/11b03Lc.wav", "11", "boredom"),
    ("generic", "anger/spk7_take1.wav", "spk7", "angry"),
    ("generic", "Happy/42_a_b.flac", "42", "happy"),
    ("generic", "sadness/anna_x.wav", "anna", "sad"),
]


def touch(root: Path, *names: str) -> None:
    """Create empty files: the loader reads names only, never audio."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def ravdess_name(emotion: int, actor: int, *, statement: int = 1, channel: int = 1) -> str:
    return f"03-{channel:02d}-{emotion:02d}-01-{statement:02d}-01-{actor:02d}.wav"


@pytest.mark.parametrize(("corpus", "name", "speaker", "emotion"), EXAMPLES)
def test_each_convention_reads_speaker_and_emotion(tmp_path, corpus, name, speaker, emotion):
    # Prepare
    touch(tmp_path, name)

    # Execute
    loaded = load_corpus(tmp_path)

    # Assert
    assert loaded.name == corpus
    assert [(u.speaker, u.emotion, u.corpus) for u in loaded.utterances] == [
        (speaker, emotion, corpus)
    ]
    assert loaded.utterances[0].path == tmp_path / name
    assert loaded.skipped == ()


@pytest.mark.parametrize(
    ("convention", "name"),
    [
        ("ravdess", "03-01-09-01-01-01-01.wav"),  # emotion 09 does not exist
        ("ravdess", "03-01-01-01-01-01-25.wav"),  # actor 25
        ("ravdess", "02-01-01-01-01-01-01.wav"),  # video-only modality
        ("ravdess", "03-01-01-01-01-01.wav"),  # six fields
        ("cremad", "1000_DFA_ANG_XX.wav"),  # speaker below 1001
        ("cremad", "1001_DFA_ANG_ZZ.wav"),  # bad level
        ("tess", "MAF_back_angry.wav"),  # unknown speaker
        ("emodb", "04a01Fa.wav"),  # speaker 04 is not in Emo-DB
        ("emodb", "03a01Xa.wav"),  # bad emotion letter
        ("generic", "stuff/spk1_001.wav"),  # folder is not an emotion
        ("generic", "angry/nounderscore.wav"),  # no speaker part
    ],
)
def test_conventions_reject_near_misses(tmp_path, convention, name):
    # Prepare
    touch(tmp_path, name)

    # Execute
    parsed = CONVENTIONS[convention].parse(tmp_path / name)

    # Assert
    assert parsed is None


@given(
    emotion=st.integers(1, 8),
    actor=st.integers(1, 24),
    channel=st.integers(1, 2),
    statement=st.integers(1, 2),
)
def test_ravdess_parse_round_trips_every_valid_name(emotion, actor, channel, statement):
    # Prepare
    path = Path("Actor") / ravdess_name(emotion, actor, statement=statement, channel=channel)

    # Execute
    speaker, label = CONVENTIONS["ravdess"].parse(path)

    # Assert
    assert speaker == f"{actor:02d}"
    assert label == CONVENTIONS["ravdess"].classes[emotion - 1]


def test_ravdess_mixes_wav_and_flac_and_keeps_one_per_stem(tmp_path):
    # Prepare
    touch(
        tmp_path,
        "Actor_01/" + ravdess_name(1, 1),
        "Actor_01/" + ravdess_name(1, 1).replace(".wav", ".flac"),  # same stem twice
        "Actor_02/" + ravdess_name(3, 2).replace(".wav", ".FLAC"),
    )

    # Execute
    loaded = load_corpus(tmp_path, corpus="ravdess")

    # Assert
    assert [u.path.name for u in loaded.utterances] == [
        "03-01-01-01-01-01-01.wav",
        "03-01-03-01-01-01-02.FLAC",
    ]
    assert loaded.speakers == ("01", "02")
    assert loaded.classes == ("neutral", "happy")


def test_auto_detection_needs_half_the_files_and_prefers_specific_conventions(tmp_path):
    # Prepare
    files = [tmp_path / n for n in ("03-01-01-01-01-01-01.wav", "1001_DFA_ANG_XX.wav", "a.wav")]
    generic_and_ravdess = [tmp_path / "angry" / "x_1.wav", tmp_path / ravdess_name(5, 3)]

    # Execute
    detected = detect_convention(files[:2])
    tie = detect_convention(generic_and_ravdess)

    # Assert
    assert detected == "ravdess"  # 1 of 2 is half: ties go to the earlier convention
    assert tie == "ravdess"
    with pytest.raises(CorpusError):
        detect_convention(files)  # 1 of 3 is no majority


def test_explicit_corpus_skips_and_reports_junk(tmp_path):
    # Prepare
    touch(
        tmp_path,
        *(f"Actor_01/{ravdess_name(e, 1)}" for e in (1, 3, 4)),
        "Actor_01/readme.wav",
        "Actor_01/03-01-09-01-01-01-01.wav",
        "extra/1001_DFA_ANG_XX.flac",
        "Actor_01/notes.txt",  # not audio: neither loaded nor skipped
        ".hidden/03-01-02-01-01-01-01.wav",
        "Actor_01/._03-01-02-01-01-01-01.wav",  # macOS resource fork
    )

    # Execute
    loaded = load_corpus(tmp_path, corpus="RAVDESS")

    # Assert
    assert len(loaded.utterances) == 3
    assert [p.name for p in loaded.skipped] == [
        "03-01-09-01-01-01-01.wav",
        "readme.wav",
        "1001_DFA_ANG_XX.flac",
    ]
    assert loaded.skipped_summary() == (
        "skipped 3 files (first: Actor_01/03-01-09-01-01-01-01.wav, Actor_01/readme.wav, "
        "extra/1001_DFA_ANG_XX.flac)"
    )


def test_emotion_subset_filters_in_canonical_order(tmp_path):
    # Prepare
    touch(tmp_path, *(ravdess_name(e, a) for e in range(1, 9) for a in (1, 2)))

    # Execute
    everything = load_corpus(tmp_path)
    four = load_corpus(tmp_path, emotions="angry, Sad,neutral,happy")
    five = load_corpus(tmp_path, emotions="five")

    # Assert
    assert everything.classes == CONVENTIONS["ravdess"].classes
    assert four.classes == ("neutral", "happy", "sad", "angry")
    assert four.counts() == {"neutral": 2, "happy": 2, "sad": 2, "angry": 2}
    assert five.classes == ("neutral", "happy", "sad", "angry", "fearful")
    assert {u.emotion for u in five.utterances} == set(five.classes)


def test_parse_emotions_names_sets_and_synonyms():
    # Execute / Assert
    assert parse_emotions(None) is None
    assert parse_emotions("all") is None
    assert parse_emotions("shared4") == ("neutral", "happy", "sad", "angry")
    assert parse_emotions(["fear", "anger", "fear"]) == ("angry", "fearful")
    assert parse_emotions("shared4,calm") == ("neutral", "calm", "happy", "sad", "angry")
    with pytest.raises(ConfigError, match="no emotions"):
        parse_emotions(" , ")


def test_unknown_or_absent_emotion_lists_the_corpus_classes(tmp_path):
    # Prepare
    touch(tmp_path, "03a01Fa.wav", "03a01Wa.wav")

    # Execute / Assert
    with pytest.raises(ConfigError, match="unknown emotion 'joyful'.*happy, angry"):
        load_corpus(tmp_path, emotions="happy,joyful")
    with pytest.raises(
        ConfigError, match="emodb corpus .* has no neutral, sad; its classes: happy, angry"
    ):
        load_corpus(tmp_path, emotions="shared4")


def test_normalize_speaker_ids_matches_numbers_and_case(tmp_path):
    # Prepare
    touch(tmp_path, *(ravdess_name(1, a) for a in (1, 2, 21, 22)))
    corpus = load_corpus(tmp_path)

    # Execute
    ids = normalize_speaker_ids("1, 01,22,021", corpus)  # 021 is actor 21

    # Assert
    assert ids == ("01", "22", "21")
    with pytest.raises(ConfigError, match="'23' not among the ravdess speakers: 01, 02, 21, 22"):
        normalize_speaker_ids(["23"], corpus)


def test_normalize_speaker_ids_ignores_case_for_names(tmp_path):
    # Prepare
    touch(tmp_path, "OAF_back_angry.wav", "YAF_back_sad.wav")

    # Execute
    ids = normalize_speaker_ids(["yaf"], load_corpus(tmp_path))

    # Assert
    assert ids == ("YAF",)


def test_empty_folder_says_no_audio_found(tmp_path):
    # Prepare
    touch(tmp_path, "notes.txt")

    # Execute / Assert
    with pytest.raises(CorpusError, match=f"no audio files .* found under {tmp_path}"):
        load_corpus(tmp_path)


def test_unrecognised_folder_names_conventions_tried_and_an_example(tmp_path):
    # Prepare
    touch(tmp_path, "clips/take_one.wav", "clips/take_two.wav")

    # Execute
    with pytest.raises(CorpusError) as caught:
        load_corpus(tmp_path)

    # Assert
    message = str(caught.value)
    assert "\n" not in message
    assert all(name in message for name in CONVENTIONS)
    assert "clips/take_one.wav" in message


def test_explicit_convention_matching_nothing_is_an_error(tmp_path):
    # Prepare
    touch(tmp_path, "03a01Fa.wav")

    # Execute / Assert
    with pytest.raises(CorpusError, match="follows the cremad naming.*03a01Fa.wav"):
        load_corpus(tmp_path, corpus="cremad")


def test_bad_corpus_name_or_folder(tmp_path):
    # Execute / Assert
    with pytest.raises(ConfigError, match="auto, ravdess, cremad, tess, emodb, generic, iemocap"):
        load_corpus(tmp_path, corpus="savee")
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "missing")


def test_scan_is_sorted_and_follows_symlinked_folders_once(tmp_path):
    # Prepare
    touch(tmp_path, "real/b.wav", "real/a.flac", "real/a.wav")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "loop").symlink_to(tmp_path, target_is_directory=True)

    # Execute
    found = find_audio_files(tmp_path)

    # Assert
    assert [p.name for p in found] == ["a.wav", "b.wav"]


@pytest.mark.ravdess
def test_real_ravdess_has_1440_balanced_utterances(ravdess_root):
    # Execute
    corpus = load_corpus(ravdess_root)

    # Assert
    assert corpus.name == "ravdess"
    assert len(corpus.utterances) == 1440
    assert corpus.speakers == tuple(f"{a:02d}" for a in range(1, 25))
    assert len(corpus.classes) == 8
    assert corpus.counts() == {e: 96 if e == "neutral" else 192 for e in corpus.classes}
    assert corpus.skipped == ()
