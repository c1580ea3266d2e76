#!/usr/bin/env python3
"""Writes the sample essays (samples/) and test fixtures (tests/fixtures/) of the File Service.

The files are committed; this script is how they were made, so they can be made again.
Only the encrypted PDF needs a package from PyPI (pypdf); the rest is the standard library.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pypdf
    /tmp/venv/bin/python samples/make_samples.py
"""
import io
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = HERE
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")

ESSAY_TXT = (
    "The Value of Reading\n\n"
    "Reading widens the world a student can imagine. A novel lets us live inside another "
    "person's choices, and an essay shows how an argument is built one step at a time. "
    "Students who read every day learn new words without noticing, and they meet ideas that "
    "their own neighbourhood would never show them. That is why schools should protect quiet "
    "time for reading, even when the timetable is full.\n"
)

ESSAY_DOCX = [
    "Why Sleep Matters",
    "Teenagers need more sleep than most of them get. Without it, memory suffers, mood drops "
    "and attention in class fades long before lunch.",
    "Schools that start later in the morning report better grades and fewer absences, which "
    "suggests the timetable, not laziness, is often to blame.",
]

ESSAY_PDF = [
    "Climate and Cities",
    "Cities cover a small part of the planet but produce most of its emissions.",
    "Better public transport, trees along streets and efficient buildings",
    "can cut those emissions while making city life healthier for everyone.",
]


def docx_bytes(paragraphs):
    body = "".join(
        f'<w:p><w:r><w:t xml:space="preserve">{p}</w:t></w:r></w:p>' for p in paragraphs
    )
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    )
    content_types = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/word/document.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>'
        "</Types>"
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" '
        'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
        'Target="word/document.xml"/></Relationships>'
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", content_types)
        z.writestr("_rels/.rels", rels)
        z.writestr("word/document.xml", document)
    return out.getvalue()


def pdf_bytes(lines):
    def escape(s):
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = " 0 -16 Td ".join(f"({escape(line)}) Tj" for line in lines)
    text = f"BT /F1 12 Tf 72 720 Td {shown} ET"
    stream = text.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def encrypted(pdf):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    mode = "w" if isinstance(data, str) else "wb"
    with open(os.path.join(folder, name), mode) as f:
        f.write(data)


def main():
    pdf = pdf_bytes(ESSAY_PDF)
    write(SAMPLES, "reading.txt", ESSAY_TXT)
    write(SAMPLES, "sleep.docx", docx_bytes(ESSAY_DOCX))
    write(SAMPLES, "climate.pdf", pdf)
    write(SAMPLES, "too-short.txt", "Too short to be an essay.\n")
    write(SAMPLES, "drawing.png", bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 32)

    write(FIXTURES, "encrypted.pdf", encrypted(pdf))
    write(FIXTURES, "not-really.pdf", ESSAY_TXT)
    write(FIXTURES, "zip-not-docx.docx", _zip_without_document())
    write(FIXTURES, "pdf-named.txt", pdf)
    write(FIXTURES, "latin1-bytes.txt", ESSAY_TXT.encode() + b"\xff\xfe broken \xc3 bytes\n")


def _zip_without_document():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("hello.txt", "no word/document.xml in here")
    return out.getvalue()


if __name__ == "__main__":
    main()
