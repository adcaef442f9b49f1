"""Reads a GSPS written by Consilium with pydicom and prints a JSON summary of what it
references and draws; exit 3 when pydicom is not importable (the Rust test decides)."""
import json
import sys

try:
    import pydicom
except ImportError:
    sys.exit(3)

ds = pydicom.dcmread(sys.argv[1])
assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
assert ds.Modality == "PR"
refs = [i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedImageSequence]
objects = 0
for item in ds.GraphicAnnotationSequence:
    for g in getattr(item, "GraphicObjectSequence", []):
        assert g.GraphicAnnotationUnits == "PIXEL"
        assert len(g.GraphicData) == 2 * g.NumberOfGraphicPoints
        objects += 1
print(json.dumps({
    "sop_class": ds.SOPClassUID,
    "referenced": refs,
    "graphic_objects": objects,
    "windows": [[float(v.WindowCenter), float(v.WindowWidth)] for v in ds.SoftcopyVOILUTSequence],
    "presentation_lut": ds.PresentationLUTShape,
}))
