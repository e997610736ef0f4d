"""PAWS-X lexicons for en de es fr ja ko zh (written for this project).

A sentence says that person A does something to person B at a place and time (places and times
come from the base clause lexicon of the language). Paraphrase pairs keep A as the actor and only
move the time/place phrase; non-paraphrase pairs swap A and B, so the visible cue is which name
acts (comes first / carries the topic particle). Korean names end in a vowel so the particles
는/를 always fit.
"""

PAWSX: dict[str, dict] = {
    "en": {
        "names": ["Anna", "Peter", "Maria", "James", "Laura", "David", "Emma", "Thomas",
                  "Sarah", "Daniel"],
        "verbs": ["meets", "visits", "helps", "thanks", "invites", "follows", "greets",
                  "photographs", "calls", "waits for"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "de": {
        "names": ["Anna", "Lukas", "Sophie", "Jonas", "Marie", "Felix", "Lena", "Paul", "Hannah",
                  "Jan"],
        "verbs": ["trifft", "besucht", "hilft", "dankt", "folgt", "grüßt", "fotografiert",
                  "erwartet", "sucht", "begleitet"],
        "templates": ["{a} {verb} {b} {time} {place}.", "{Time} {verb} {a} {b} {place}.",
                      "{Place} {verb} {a} {b} {time}."],
    },
    "es": {
        "names": ["Ana", "Pedro", "Lucía", "Javier", "Carmen", "Diego", "Sofía", "Miguel",
                  "Elena", "Pablo"],
        "verbs": ["ve a", "visita a", "ayuda a", "da las gracias a", "invita a", "sigue a",
                  "saluda a", "fotografía a", "llama a", "espera a"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "fr": {
        "names": ["Camille", "Louis", "Chloé", "Hugo", "Léa", "Jules", "Manon", "Théo", "Inès",
                  "Lucas"],
        "verbs": ["rencontre", "rend visite à", "aide", "remercie", "invite", "suit", "salue",
                  "photographie", "appelle", "attend"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "ja": {
        "names": ["花子", "太郎", "健太", "美咲", "翔太", "由美", "大輔", "陽菜", "直樹", "恵"],
        "verbs": ["に会います", "を訪ねます", "を手伝います", "に感謝します", "を招待します",
                  "を見送ります", "にあいさつします", "を撮影します", "に電話します", "を待ちます"],
        "templates": ["{a}は{time}{place}{b}{verb}。", "{time}、{a}は{place}{b}{verb}。",
                      "{place}、{a}は{time}{b}{verb}。"],
    },
    "ko": {
        "names": ["민수", "지호", "유나", "하나", "수미", "도하", "세라", "준호", "미나", "태호"],
        "verbs": ["를 만납니다", "를 방문합니다", "를 돕습니다", "에게 감사합니다",
                  "를 초대합니다", "를 따라갑니다", "에게 인사합니다", "를 찍습니다",
                  "에게 전화합니다", "를 기다립니다"],
        "templates": ["{a}는 {time} {place} {b}{verb}.", "{time} {a}는 {place} {b}{verb}.",
                      "{place} {a}는 {time} {b}{verb}."],
    },
    "zh": {
        "names": ["小明", "王芳", "李华", "张伟", "刘洋", "陈静", "赵磊", "孙丽", "周杰", "吴敏"],
        "verbs": ["见到", "拜访", "帮助", "感谢", "邀请", "陪着", "问候", "等", "想念", "找"],
        "templates": ["{a}{time}{place}{verb}{b}。", "{time}{a}{place}{verb}{b}。",
                      "{time}，{a}{place}{verb}{b}。"],
    },
}
