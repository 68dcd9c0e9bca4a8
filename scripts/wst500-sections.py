#!/usr/bin/env python3
"""Writes crates/cda/data/wst500-sections.tsv: the sections of each WS/T 500-2016 document type.

Reads the section names from the C0001.xsd ... C0053.xsd schemas (the xs:documentation annotation on
structuredBody/component, e.g. C0002: "过敏史章节 主诉章节现病史章节 ..."). The schemas name the
sections but never give their codes and carry no optionality cue (no 可选/R2 marks; "1..*" appears
only on entries), so two things here are made by hand and marked as such:

- SECTION_LOINC: the LOINC code WS/T 500 gives each named section, checked against public WS/T 500
  document templates (section code/@code with its LOINC displayName). A section WS/T 500 leaves
  without a code (卫生事件, 检验报告, 检查报告, 其他处置, ...) or whose code was not checked gets "-":
  it is listed but nothing can be required of it, because a section is recognised by its code.
- REQUIRED: the sections a document type must carry, decided conservatively for the types the
  platform's issue names (see crates/cda/data/README.md). Every other type requires nothing beyond
  the one section the parser already asks of every structured body.

Usage: python3 scripts/wst500-sections.py /work/shared/data/wst500-hip/cda-xsd > crates/cda/data/wst500-sections.tsv
"""

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

XS = "{http://www.w3.org/2001/XMLSchema}"

# Hand-made: section name (as the annotations spell it, without 章节) -> LOINC code.
SECTION_LOINC = {
    "过敏史": "48765-2",  # Allergies, adverse reactions, alerts
    "主诉": "10154-3",  # CHIEF COMPLAINT
    "现病史": "10164-2",  # HISTORY OF PRESENT ILLNESS
    "既往史": "11348-0",  # HISTORY OF PAST ILLNESS
    "体格检查": "29545-1",  # PHYSICAL EXAMINATION
    "实验室检验": "30954-2",  # RELEVANT DIAGNOSTIC TESTS AND/OR LABORATORY DATA (STUDIES SUMMARY)
    "实验室检查": "30954-2",
    "诊断记录": "29548-5",  # Diagnosis
    "诊断": "29548-5",
    "治疗计划": "18776-5",  # TREATMENT PLAN
    "医嘱": "46209-3",  # Provider orders
    "手术操作": "47519-4",  # HISTORY OF PROCEDURES
    "症状": "11450-4",  # PROBLEM LIST
    "主要健康问题": "11450-4",
    "入院诊断": "46241-6",  # HOSPITAL ADMISSION DX
    "出院诊断": "11535-2",  # HOSPITAL DISCHARGE DX
    "住院过程": "8648-8",  # HOSPITAL COURSE
    "输血": "56836-0",  # History of blood transfusion
    "预防接种史": "11369-6",  # HISTORY OF IMMUNIZATIONS
    "预防免疫史": "11369-6",
    "个人史": "29762-2",  # Social history
    "月经史": "49033-4",  # Menstrual history
    "家族史": "10157-6",  # HISTORY OF FAMILY MEMBER DISEASES
    "生命体征": "8716-3",  # VITAL SIGNS
    "用药": "10160-0",  # HISTORY OF MEDICATION USE
    "术前诊断": "10219-4",  # Surgical operation note preoperative Dx
}

# Hand-made: the required sections (by LOINC code) of the types the issue names. 转诊记录 is not a
# WS/T 500 type (it is WS/T 483.20, a health-record document), so it has no entry.
REQUIRED = {
    "C0001": {"11348-0"},  # 病历概要: 既往史 (卫生事件 has no code in WS/T 500)
    "C0002": {"10154-3", "29548-5"},  # 门(急)诊病历: 主诉, 诊断记录
    "C0006": {"29545-1"},  # 检查报告: 体格检查 (WS/T 500 puts the examination items and results here)
    "C0007": {"30954-2"},  # 检验报告: 实验室检查 (the results)
    "C0053": {"46241-6", "11535-2", "8648-8"},  # 出院小结: 入院诊断, 出院诊断, 住院过程
}

# Hand-made: annotation fragments that are not section names.
NOT_SECTIONS = {"计划", "术后交接"}  # C0042 repeats "治疗计划章节" as "计划章节 1..*"; C0019's 术后交接 is a note


def section_names(annotation: str) -> list[str]:
    text = annotation.replace("1..*", " ").replace("*", " ")
    text = re.sub(r"：[^章]*?结果", "", text)  # "护理操作章节：一个护理操作对应多个…结果" explains, names nothing
    text = text.replace("补充LOINC代码", " ").replace("（同用药章节）", " ").replace("既往史 ", "既往史章节 ")
    names = []
    for part in re.split(r"章节|\s+", text):
        name = part.strip()
        if name and name not in NOT_SECTIONS and name not in names:
            names.append(name)
    return names


def body_annotation(schema: Path) -> str:
    tree = ET.parse(schema)
    body = next(e for e in tree.iter(XS + "element") if e.get("name") == "structuredBody")
    component = next(e for e in body.iter(XS + "element") if e.get("name") == "component")
    docs = component.findall(f"{XS}annotation/{XS}documentation")
    return " ".join(d.text or "" for d in docs)


def main() -> None:
    folder = Path(sys.argv[1])
    print("# WS/T 500-2016 sections per document type: type, section LOINC code ('-': none), section name,")
    print("# required (yes/no). Names read from the C0001-C0053 schemas of liaozhimingandy/django_hip_service")
    print("# (Apache-2.0) at commit 656126f631fe0782a57d502445dfda94aa960921; codes and the required column are")
    print("# hand-made (scripts/wst500-sections.py); see crates/cda/data/README.md.")
    for n in range(1, 54):
        code = f"C{n:04d}"
        names = section_names(body_annotation(folder / f"{code}.xsd"))
        required = REQUIRED.get(code, set())
        listed = {SECTION_LOINC.get(name) for name in names}
        missing = required - listed
        assert not missing, f"{code}: required {missing} not among its sections"
        seen = set()
        for name in names:
            loinc = SECTION_LOINC.get(name, "-")
            # Two names with one code (诊断 and 诊断记录 in C0042) are one rule.
            needed = "yes" if loinc in required and loinc not in seen else "no"
            seen.add(loinc)
            print(f"{code}\t{loinc}\t{name}\t{needed}")


if __name__ == "__main__":
    main()
