"""Coordinates and relative times that begin with a minus sign are values, not options."""

from proxy.cli import build_parser


def test_negative_coordinates_and_relative_times_parse_as_values():
    args = build_parser().parse_args(["query", "--bbox", "-10,-20,30,40", "--from", "-7d"])
    assert args.bbox == "-10,-20,30,40"
    assert args.start == "-7d"
    args = build_parser().parse_args(["query", "enrolments", "--near", "-33.9,18.4,10"])
    assert args.near == "-33.9,18.4,10"
