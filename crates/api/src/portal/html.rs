//! The portal's HTML: escaping, the two languages, the page frame (inline CSS, skip link,
//! navigation) and the Chinese/English messages for engine errors. Everything written into a
//! page passes through [`esc`] unless it is markup built here.

use std::fmt::Write;

use engine::{BookingRules, EngineError};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query or path component.
pub fn url(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The page language: Simplified Chinese first, English on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    /// The text in this language.
    pub fn t<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }
}

/// The sections of the portal, in menu order: (path, Chinese, English).
pub const MENU: &[(&str, &str, &str)] = &[
    ("/portal/", "首页", "Home"),
    ("/portal/card", "我的健康卡", "Health card"),
    ("/portal/doctors", "找医生/科室", "Find a doctor"),
    ("/portal/appointments", "我的预约", "Appointments"),
    ("/portal/visits", "互联网复诊", "Online follow-up"),
    ("/portal/reports", "我的报告", "Reports"),
    ("/portal/records", "我的档案", "My records"),
    ("/portal/access-log", "访问记录", "Access log"),
    ("/portal/consents", "我的授权", "Authorizations"),
    ("/portal/family", "家庭成员", "Family"),
];

/// Mobile-first, high-contrast (text and buttons ≥ 7:1), visible focus (a black ring in a white
/// halo, visible on white and on the blue header alike).
const CSS: &str = "*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,\"PingFang SC\",\"Microsoft YaHei\",\
\"WenQuanYi Micro Hei\",sans-serif;color:#1a1a1a;background:#f4f6f8}a{color:#0b4f9c}header{background:#0b4f9c;\
color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;justify-content:space-between}\
header a{color:#fff}.brand{font-weight:700;font-size:1.1rem;text-decoration:none}nav ul{list-style:none;margin:0;\
padding:.4rem .5rem;display:flex;flex-wrap:wrap;gap:.25rem;background:#fff;border-bottom:1px solid #ccd}nav a{display:\
block;padding:.45rem .6rem;border-radius:4px;text-decoration:none}nav a[aria-current]{background:#0b4f9c;color:#fff}\
main{max-width:46rem;margin:0 auto;padding:1rem}h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.15rem;\
margin:1.2rem 0 .5rem}.card{background:#fff;border:1px solid #ccd;border-radius:8px;padding:1rem;margin:0 0 .8rem}\
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(9rem,1fr));gap:.6rem}.tiles a{display:block;\
background:#fff;border:1px solid #ccd;border-radius:8px;padding:1rem;text-decoration:none;font-weight:600}\
label{display:block;font-weight:600;margin:.6rem 0 .2rem}input,select{font:inherit;width:100%;padding:.5rem;border:\
1px solid #555;border-radius:4px;background:#fff;color:#1a1a1a}input[type=radio],input[type=checkbox]{width:auto}\
button,.button{font:inherit;display:inline-block;background:#0b4f9c;color:#fff;border:0;border-radius:4px;\
padding:.55rem 1rem;margin:.5rem .3rem 0 0;cursor:pointer;text-decoration:none}button.secondary{background:#fff;color:#0b4f9c;border:\
1px solid #0b4f9c}button.danger{background:#a4161a}a:focus-visible,button:focus-visible,input:focus-visible,\
select:focus-visible,textarea:focus-visible{outline:3px solid #000;outline-offset:2px;box-shadow:0 0 0 6px #fff}.error{background:#fdecea;border:2px solid #a4161a;\
color:#6b0d10;padding:.75rem;border-radius:6px;margin:0 0 1rem}.notice{background:#e7f4ea;border:2px solid #1e6b34;\
color:#0f3d1d;padding:.75rem;border-radius:6px;margin:0 0 1rem}.muted{color:#4a4a4a}table{border-collapse:collapse;\
width:100%;background:#fff}th,td{border:1px solid #ccd;padding:.4rem;text-align:left;vertical-align:top}\
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;color:#0b4f9c;padding:.5rem;\
z-index:9}.qr{background:#fff;display:inline-block;padding:.5rem;border:1px solid #ccd}.qr svg{width:16rem;\
height:16rem;max-width:80vw;max-height:80vw}ul.plain{list-style:none;padding:0;margin:0}.slots form{display:inline}\
.high{color:#a4161a;font-weight:700}.low{color:#0b4f9c;font-weight:700}footer{text-align:center;padding:1rem;\
font-size:.9rem;color:#4a4a4a}.wide main{max-width:72rem}.cols{display:grid;grid-template-columns:repeat(auto-fit,\
minmax(20rem,1fr));gap:1rem}.warn{background:#fff4e5;border:2px solid #8a4b00;color:#4d2a00;padding:.6rem;border-radius:6px;\
margin:.4rem 0}.stop{background:#fdecea;border:2px solid #a4161a;color:#6b0d10;padding:.6rem;border-radius:6px;margin:.4rem 0}\
.msg{border-left:4px solid #0b4f9c;padding:.3rem .6rem;margin:.4rem 0;background:#fff}.msg.mine{border-color:#1e6b34}\
textarea{font:inherit;width:100%;padding:.5rem;border:1px solid #555;border-radius:4px}.inline form{display:inline}";

/// The site a page belongs to: the resident portal or one of the staff workbench's areas.
pub struct Site {
    /// The home page (the brand links there).
    pub home: &'static str,
    /// The brand text: (Chinese, English).
    pub brand: (&'static str, &'static str),
    /// The sections in menu order: (path, Chinese, English).
    pub menu: &'static [(&'static str, &'static str, &'static str)],
    /// Where the sign-out form posts.
    pub logout: &'static str,
    /// The label before the signed-in person's name, and where it links (if anywhere).
    pub person_label: (&'static str, &'static str),
    pub person_link: Option<&'static str>,
    /// Desktop-first pages (a wider column) instead of phone-first.
    pub wide: bool,
}

/// The resident portal.
pub const PORTAL: Site = Site {
    home: "/portal/",
    brand: ("健康福建 12320", "Fujian Health 12320"),
    menu: MENU,
    logout: "/portal/logout",
    person_label: ("就诊人：", "Acting for: "),
    person_link: Some("/portal/family"),
    wide: false,
};

/// What the frame shows around a page.
pub struct Frame<'a> {
    pub site: &'a Site,
    pub lang: Lang,
    pub title: &'a str,
    /// The current section's path (marked in the menu); `None` for the sign-in pages.
    pub section: Option<&'a str>,
    /// The name of the person signed in or acted for, and the signed-in person's form token
    /// (for the sign-out button).
    pub acting_for: Option<&'a str>,
    pub csrf: Option<&'a str>,
    /// The current path and query without `lang` (for the language switch).
    pub here: &'a str,
}

/// A complete page: the frame around `body`, with `error` or `notice` shown first.
pub fn page(frame: &Frame, error: Option<&str>, notice: Option<&str>, body: &str) -> String {
    let l = frame.lang;
    let site = frame.site;
    let mut out = String::with_capacity(8 * 1024 + body.len());
    let html_lang = l.t("zh-CN", "en");
    let brand = l.t(site.brand.0, site.brand.1);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"{html_lang}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{} - {brand}</title><style>{CSS}</style></head><body{}>\
         <a class=\"skip\" href=\"#main\">{}</a><header><a class=\"brand\" href=\"{}\">{brand}</a>",
        esc(frame.title),
        if site.wide { " class=\"wide\"" } else { "" },
        l.t("跳到主要内容", "Skip to main content"),
        site.home,
    );
    let (other, other_label) = match l {
        Lang::Zh => ("en", "English"),
        Lang::En => ("zh", "中文"),
    };
    let sep = if frame.here.contains('?') { '&' } else { '?' };
    let _ = write!(out, "<span>");
    if let Some(name) = frame.acting_for {
        let label = l.t(site.person_label.0, site.person_label.1);
        match site.person_link {
            Some(link) => {
                let _ = write!(out, "<a href=\"{link}\">{label}{}</a> · ", esc(name));
            }
            None => {
                let _ = write!(out, "{label}{} · ", esc(name));
            }
        }
    }
    let _ = write!(
        out,
        "<a href=\"{}{sep}lang={other}\" lang=\"{}\">{other_label}</a></span></header>",
        esc(frame.here),
        if other == "en" { "en" } else { "zh-CN" }
    );
    if let Some(section) = frame.section {
        let _ = write!(out, "<nav aria-label=\"{}\"><ul>", l.t("主菜单", "Main menu"));
        for (path, zh, en) in site.menu {
            let current = if *path == section { " aria-current=\"page\"" } else { "" };
            let _ = write!(out, "<li><a href=\"{path}\"{current}>{}</a></li>", l.t(zh, en));
        }
        let _ = write!(out, "</ul></nav>");
    }
    let _ = write!(out, "<main id=\"main\" tabindex=\"-1\"><h1>{}</h1>", esc(frame.title));
    if let Some(e) = error {
        let _ = write!(out, "<div class=\"error\" role=\"alert\">{}</div>", esc(e));
    }
    if let Some(n) = notice {
        let _ = write!(out, "<div class=\"notice\" role=\"status\">{}</div>", esc(n));
    }
    out.push_str(body);
    out.push_str("</main><footer>");
    if let Some(csrf) = frame.csrf {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button class=\"secondary\" type=\"submit\">{}</button></form>",
            site.logout,
            esc(csrf),
            l.t("退出登录", "Sign out")
        );
    }
    let _ = write!(
        out,
        "<p>{}</p></footer></body></html>",
        l.t("12320 卫生健康热线 · 演示数据均为虚构", "12320 health hotline · demo data is synthetic")
    );
    out
}

/// A hidden form-token field.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A clear message for an engine error, in the page language. Booking-rule refusals (which
/// the engine words in English with the Chinese in parentheses) get a full sentence each;
/// other errors a sentence by kind, with the engine's reason when it helps.
pub fn engine_message(error: &EngineError, lang: Lang, rules: &BookingRules) -> String {
    let raw = raw_message(error);
    let l = lang;
    if raw.contains("号源已被预约") {
        return l
            .t("该号源已被他人预约，请选择其他时间段。", "This slot has just been booked: please choose another time.")
            .into();
    }
    if raw.contains("每人每天最多预约") {
        return match l {
            Lang::Zh => format!(
                "每人每天最多预约{}个号，您当天的预约已达上限。请选择其他日期，或先取消当天的其他预约。",
                rules.per_patient_per_day
            ),
            Lang::En => format!(
                "You can book at most {} appointments a day and that day is full: choose another day or cancel one first.",
                rules.per_patient_per_day
            ),
        };
    }
    if raw.contains("同一医生每天限约一个号") {
        return l
            .t(
                "同一医生每天只能预约一个号，您当天已预约过这位医生。",
                "You can book one appointment per doctor per day, and you already have one with this doctor that day.",
            )
            .into();
    }
    if raw.contains("不能在线取消") {
        return match l {
            Lang::Zh => format!(
                "距就诊开始已不足{}分钟，不能在线取消。如需取消，请致电医院或拨打12320。",
                rules.cancel_before_minutes
            ),
            Lang::En => format!(
                "The visit starts in less than {} minutes, so it can no longer be cancelled online: please call the hospital or 12320.",
                rules.cancel_before_minutes
            ),
        };
    }
    if let Some(at) = raw.find("暂停在线预约至") {
        let until: String = raw[at + "暂停在线预约至".len()..].chars().take(10).collect();
        return match l {
            Lang::Zh => format!(
                "您近期爽约次数过多（{}天内{}次），在线预约已暂停至{until}。如有疑问请拨打12320。",
                rules.no_show_days, rules.no_show_limit
            ),
            Lang::En => format!(
                "Online booking is suspended until {until} after {} missed appointments within {} days. Call 12320 with questions.",
                rules.no_show_limit, rules.no_show_days
            ),
        };
    }
    if raw.contains("家庭医生转诊") {
        return l
            .t("该号源为家庭医生转诊预留，不能在线预约。", "This slot is reserved for family-doctor referrals.")
            .into();
    }
    if raw.contains("不对外开放预约") {
        return l
            .t("该号源仅供医院窗口挂号，不能在线预约。", "This slot is kept for the hospital's registration window.")
            .into();
    }
    match error {
        EngineError::NotFound(_) | EngineError::NotFoundExplained(_) | EngineError::Gone(_) => {
            l.t("未找到该记录，或您无权查看。", "Not found, or you may not see it.").into()
        }
        EngineError::Forbidden(_) => match l {
            Lang::Zh => format!("您无权进行此操作。（{raw}）"),
            Lang::En => format!("You may not do this ({raw})."),
        },
        EngineError::Conflict { .. } => match l {
            Lang::Zh => format!("操作未能完成：记录已被更改或规则不允许。（{raw}）"),
            Lang::En => format!("This could not be done: {raw}"),
        },
        EngineError::Unprocessable(_) | EngineError::BadRequest(_) => match l {
            Lang::Zh => format!("提交的信息有误。（{raw}）"),
            Lang::En => format!("The request was not valid: {raw}"),
        },
        _ => l.t("系统繁忙，请稍后再试。", "The service is busy: please try again later.").into(),
    }
}

/// The engine's own wording of an error.
fn raw_message(error: &EngineError) -> String {
    match error {
        EngineError::Conflict { message, .. } => message.clone(),
        EngineError::Forbidden(m) | EngineError::NotFoundExplained(m) | EngineError::MultipleMatches(m) => m.clone(),
        EngineError::BadRequest(issues) | EngineError::Unprocessable(issues) => {
            issues.iter().map(|i| i.diagnostics.as_str()).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>\"x\" & 'y'</script>"), "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;");
        assert_eq!(esc("张三"), "张三");
    }

    #[test]
    fn booking_refusals_become_chinese_sentences() {
        let rules = BookingRules::default();
        let conflict = |m: &str| EngineError::Conflict { message: m.into(), precondition: false };
        let cases = [
            ("Slot/s1 is already booked (号源已被预约): choose another slot", "已被他人预约"),
            (
                "at most 3 bookings a day per resident (每人每天最多预约3个号); 2026-01-02 already has 3",
                "每人每天最多预约3个号",
            ),
            ("one booking per doctor per day (同一医生每天限约一个号): x", "同一医生每天只能预约一个号"),
            (
                "the visit of Slot/s starts in less than 120 minutes: (距就诊不足120分钟，不能在线取消；请联系医院)",
                "不足120分钟",
            ),
            (
                "online booking is suspended until 2026-02-01 after 3 missed (爽约3次，暂停在线预约至2026-02-01)",
                "暂停至2026-02-01",
            ),
            (
                "Slot/s: this slot is reserved for family-doctor referrals (该号源为家庭医生转诊预留号源)",
                "家庭医生转诊预留",
            ),
        ];
        for (raw, expected) in cases {
            let text = engine_message(&conflict(raw), Lang::Zh, &rules);
            assert!(text.contains(expected), "{raw} → {text}");
            assert!(!text.contains("Slot/"), "no technical ids in {text}");
        }
        let english = engine_message(&conflict(cases[3].0), Lang::En, &rules);
        assert!(english.contains("less than 120 minutes"), "{english}");
        assert!(
            engine_message(&EngineError::NotFound("DiagnosticReport/x".into()), Lang::Zh, &rules).contains("未找到")
        );
    }
}
