import pytest
from astropy.io import fits

from pipeline.io.keywords import MissingKeyword, dictionary, lookup, profiles, records, resolve, select_profile
from pipeline.io.sections import Section


def test_dictionary_elements_have_keyword_type_and_definition():
    elements = dictionary()
    assert {"Detector.Amp.gain", "Exposure.darktime", "Detector.Amp.detsec"} <= set(elements)
    for element in elements.values():
        assert element.keyword and element.type in {"str", "float", "section"} and element.definition


def test_substitute_and_default_are_used_in_order():
    generic = profiles()["generic"]
    header = fits.Header({"EXPTIME": 30.0, "SATURATE": 60000, "DATASEC": "[1:10,1:20]"})
    assert lookup(header, "Exposure.darktime", generic, "f.fits") == 30.0
    header["DARKTIME"] = 31.5
    assert lookup(header, "Exposure.darktime", generic, "f.fits") == 31.5
    assert lookup(header, "Detector.Amp.maxlin", generic, "f.fits") == 60000.0
    assert lookup(header, "Detector.ccdsum", generic, "f.fits") == "1 1"
    assert lookup(header, "Detector.Amp.trimsec", generic, "f.fits") == Section(1, 10, 1, 20)


def test_missing_keyword_names_element_keywords_and_file():
    with pytest.raises(MissingKeyword) as err:
        lookup(fits.Header(), "Exposure.exptime", profiles()["generic"], "raw.fits.fz[im1]")
    message = str(err.value)
    assert "raw.fits.fz[im1]" in message and "Exposure.exptime" in message and "EXPTIME, EXPOSURE" in message


def test_bad_value_is_a_clear_error():
    with pytest.raises(ValueError, match="f.fits.*Detector.Amp.gain.*GAIN='fast'"):
        lookup(fits.Header({"GAIN": "fast"}), "Detector.Amp.gain", profiles()["generic"], "f.fits")


def test_profile_selected_from_header_then_folder_then_generic():
    assert select_profile(fits.Header({"INSTRUME": "MuSCAT4"})).name == "muscat4"
    assert select_profile(fits.Header(), "muscat3").name == "muscat3"
    assert select_profile(fits.Header({"INSTRUME": "wfc"}), "other").name == "generic"
    assert select_profile(fits.Header({"INSTRUME": "muscat3"}), override="mosaic").name == "mosaic"
    with pytest.raises(ValueError, match="unknown instrument profile"):
        select_profile(fits.Header(), override="nope")


def test_an_extension_without_inherit_takes_a_missing_keyword_from_the_primary_and_says_so():
    generic = profiles()["generic"]
    primary = fits.Header({"RDNOISE": 4.5, "EXPTIME": 30.0})
    extension = fits.Header({"EXPTIME": 31.0})
    found = resolve(extension, "Detector.Amp.rdnoise", generic, "raw.fits[im1]", primary)
    assert found.value == 4.5
    assert found.record() == {"value": 4.5, "units": "electron", "keyword": "RDNOISE", "source": "primary"}
    assert resolve(extension, "Exposure.exptime", generic, "raw.fits[im1]", primary).record()["value"] == 31.0
    assert "source" not in resolve(extension, "Exposure.exptime", generic, "raw.fits[im1]", primary).record()
    assert records(extension, ["Detector.Amp.rdnoise"], generic, "raw.fits[im1]", amp=1, primary=primary) == {
        "Detector.Amp[1].rdnoise": {"value": 4.5, "units": "electron", "keyword": "RDNOISE", "source": "primary"}
    }


def test_inherit_false_is_respected_and_without_a_primary_nothing_is_substituted():
    generic = profiles()["generic"]
    primary = fits.Header({"RDNOISE": 4.5})
    with pytest.raises(MissingKeyword, match=r"raw.fits\[im1\].*Detector.Amp.rdnoise"):
        lookup(fits.Header({"INHERIT": False}), "Detector.Amp.rdnoise", generic, "raw.fits[im1]", primary)
    with pytest.raises(MissingKeyword):
        lookup(fits.Header(), "Detector.Amp.rdnoise", generic, "raw.fits[im1]")
