//! Synthetic sample messages (no real person) for tests, the end-to-end tests of the binary and
//! `hutong bench hl7`: realistic shapes of what Chinese hospital systems send, in the versions
//! named. Segments end with CR.

/// ORU^R01 (2.5.1): a complete blood count with NM results, units, ranges and flags, an SN
/// result, a coded result and a text comment, for patient `mrn`, filler order `filler`.
pub fn oru_r01(control_id: &str, mrn: &str, filler: &str, charset: &str) -> String {
    format!(
        "MSH|^~\\&|LIS|FZ-HOSP|HUTONG|REGION|20261201101500||ORU^R01^ORU_R01|{control_id}|P|2.5.1||||||{charset}\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||陈建国||19800512|M\r\
         PV1|1|O|检验科^^^FZ-HOSP||||||||||||||||V-{mrn}\r\
         ORC|RE|P-{filler}|{filler}||CM||||20261201080000|||D001^林^医生\r\
         OBR|1|P-{filler}|{filler}|58410-2^血常规^LN|||20261201081000|||||||||D001^林^医生||||||20261201101000||HM|F\r\
         OBX|1|NM|6690-2^白细胞计数^LN||6.8|10*9/L^10*9/L^UCUM|3.5-9.5|N|||F|||20261201093000\r\
         OBX|2|NM|718-7^血红蛋白^LN||98|g/L|130-175|L|||F\r\
         OBX|3|NM|777-3^血小板计数^LN||412|10*9/L|125-350|H|||F\r\
         OBX|4|SN|5902-2^凝血酶原时间^LN||<^0.5|s|<1|N|||F\r\
         OBX|5|CWE|883-9^ABO血型^LN||A^A型^HL70005||||||F\r\
         OBX|6|ST|8251-1^备注^LN||标本轻度溶血||||||P\r\
         NTE|1||复查建议\r"
    )
}

/// ORM^O01 (2.3): a new order (NW) for a chest X-ray, stat.
pub fn orm_o01(control_id: &str, mrn: &str, placer: &str, control: &str) -> String {
    format!(
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261201083000||ORM^O01|{control_id}|P|2.3\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||王小明||19850101|M\r\
         PV1|1|O|放射科^^^FZ-HOSP||||||||||||||||V-{mrn}\r\
         ORC|{control}|{placer}|||||^^^^^S||20261201082500|||D002^黄^医生\r\
         OBR|1|{placer}||36643-5^胸部X线正侧位^LN|||||||||||||||||||||||^^^^^S\r"
    )
}

/// SIU^S12 (2.4) and friends: an outpatient appointment with doctor D003 at `start`
/// (YYYYMMDDHHMM), 15 minutes.
pub fn siu(event: &str, control_id: &str, mrn: &str, appointment: &str, start: &str) -> String {
    format!(
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261201090000||SIU^{event}|{control_id}|P|2.4\r\
         SCH|P-{appointment}|{appointment}|||||^复诊|NORMAL^常规|15|min|^^^{start}||||||||||||||Booked\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||李雷||19920304|M\r\
         RGS|1\r\
         AIS|1||CARD^心内科门诊^99HIS|{start}|||15|min\r\
         AIP|1||D003^张^医生|^主治医师||{start}|||15|min\r"
    )
}

/// MDM^T02 (2.5): a discharge summary with a base64 PDF and a text line.
pub fn mdm_t02(control_id: &str, mrn: &str, document: &str) -> String {
    format!(
        "MSH|^~\\&|EMR|FZ-HOSP|HUTONG|REGION|20261201120000||MDM^T02^MDM_T02|{control_id}|P|2.5\r\
         EVN|T02|20261201120000\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||周杰||19700101|M\r\
         PV1|1|I|心内科病区^12^3^FZ-HOSP||||||||||||||||V-{mrn}\r\
         TXA|1|DS|AP|20261201115500|D004^吴^医生||||D004^吴^医生|||{document}|||||LA||AV\r\
         OBX|1|ED|18842-5^出院小结^LN||^AP^PDF^Base64^JVBERi0xLjQKJcfsj6IK||||||F\r\
         OBX|2|TX|18842-5^出院小结^LN||患者病情稳定，准予出院。||||||F\r"
    )
}

/// ADT^A40 (2.5): record `prior` of the hospital is merged into record `survivor`.
pub fn adt_a40(control_id: &str, survivor: &str, prior: &str) -> String {
    format!(
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261201130000||ADT^A40^ADT_A39|{control_id}|P|2.5\r\
         EVN|A40|20261201130000\r\
         PID|1||{survivor}^^^FZ-HOSP^MR||欧阳娜娜||19900307|F\r\
         MRG|{prior}^^^FZ-HOSP^MR\r"
    )
}

/// An ADT visit event (2.3.1) for visit `V-{mrn}`: A01 admit, A02 transfer, A03 discharge, A11
/// cancel admit, A13 cancel discharge.
pub fn adt_visit(event: &str, control_id: &str, mrn: &str) -> String {
    let mut pv1: Vec<&str> =
        vec!["PV1", "1", "I", "心内科病区^12^3^FZ-HOSP", "", "", "内科病区^01^1^FZ-HOSP", "D001^林^医生"];
    if event != "A02" {
        pv1[6] = "";
    }
    if event == "A02" {
        pv1[3] = "ICU^02^1^FZ-HOSP";
    }
    pv1.resize(19, "");
    let visit = format!("V-{mrn}");
    pv1.push(&visit);
    pv1.resize(44, "");
    pv1.push("20261201080000");
    if event == "A03" {
        pv1.push("20261205100000");
    }
    format!(
        "MSH|^~\\&|HIS|FZ-HOSP|HUTONG|REGION|20261201130000||ADT^{event}|{control_id}|P|2.3.1\r\
         EVN|{event}|20261201130000\r\
         PID|1||{mrn}^^^FZ-HOSP^MR||赵敏||19880808|F\r\
         {}\r",
        pv1.join("|")
    )
}
