"""PAWS-X lexicons for en de es fr ja ko zh (written for this project).

A sentence says that person A does something to person B at a place and time (places and times
come from the base clause lexicon of the language). Paraphrase pairs keep A as the actor and only
move the time/place phrase; non-paraphrase pairs swap A and B (the cue is which name acts: comes
first / carries the topic particle), put another person in a role, or negate the verb
(``negated``, parallel to ``verbs``; German adds ``neg`` to the clause instead). Korean names end in a vowel so the particles
는/를 always fit.
"""

PAWSX: dict[str, dict] = {
    "en": {
        "names": ["Anna", "Peter", "Maria", "James", "Laura", "David", "Emma", "Thomas",
                  "Sarah", "Daniel"],
        "verbs": ["meets", "visits", "helps", "thanks", "invites", "follows", "greets",
                  "photographs", "calls", "waits for"],
        "negated": ["does not meet", "does not visit", "does not help", "does not thank", "does not invite", "does not follow", "does not greet", "does not photograph", "does not call", "does not wait for"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "de": {
        "names": ["Anna", "Lukas", "Sophie", "Jonas", "Marie", "Felix", "Lena", "Paul", "Hannah",
                  "Jan"],
        "verbs": ["trifft", "besucht", "hilft", "dankt", "folgt", "grüßt", "fotografiert",
                  "erwartet", "sucht", "begleitet"],
        "negated": ["trifft", "besucht", "hilft", "dankt", "folgt", "grüßt", "fotografiert", "erwartet", "sucht", "begleitet"],
        "templates": ["{a} {verb} {b} {time}{neg} {place}.", "{Time} {verb} {a} {b}{neg} {place}.",
                      "{Place} {verb} {a} {b} {time}{neg}."],
        "neg": " nicht",
    },
    "es": {
        "names": ["Ana", "Pedro", "Lucía", "Javier", "Carmen", "Diego", "Sofía", "Miguel",
                  "Elena", "Pablo"],
        "verbs": ["ve a", "visita a", "ayuda a", "da las gracias a", "invita a", "sigue a",
                  "saluda a", "fotografía a", "llama a", "espera a"],
        "negated": ["no ve a", "no visita a", "no ayuda a", "no da las gracias a", "no invita a", "no sigue a", "no saluda a", "no fotografía a", "no llama a", "no espera a"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "fr": {
        "names": ["Camille", "Louis", "Chloé", "Hugo", "Léa", "Jules", "Manon", "Théo", "Inès",
                  "Lucas"],
        "verbs": ["rencontre", "rend visite à", "aide", "remercie", "invite", "suit", "salue",
                  "photographie", "appelle", "attend"],
        "negated": ["ne rencontre pas", "ne rend pas visite à", "n'aide pas", "ne remercie pas", "n'invite pas", "ne suit pas", "ne salue pas", "ne photographie pas", "n'appelle pas", "n'attend pas"],
        "templates": ["{a} {verb} {b} {place} {time}.", "{Time}, {a} {verb} {b} {place}.",
                      "{Place}, {a} {verb} {b} {time}."],
    },
    "ja": {
        "names": ["花子", "太郎", "健太", "美咲", "翔太", "由美", "大輔", "陽菜", "直樹", "恵"],
        "verbs": ["に会います", "を訪ねます", "を手伝います", "に感謝します", "を招待します",
                  "を見送ります", "にあいさつします", "を撮影します", "に電話します", "を待ちます"],
        "negated": ["に会いません", "を訪ねません", "を手伝いません", "に感謝しません", "を招待しません", "を見送りません", "にあいさつしません", "を撮影しません", "に電話しません", "を待ちません"],
        "templates": ["{a}は{time}{place}{b}{verb}。", "{time}、{a}は{place}{b}{verb}。",
                      "{place}、{a}は{time}{b}{verb}。"],
    },
    "ko": {
        "names": ["민수", "지호", "유나", "하나", "수미", "도하", "세라", "준호", "미나", "태호"],
        "verbs": ["를 만납니다", "를 방문합니다", "를 돕습니다", "에게 감사합니다",
                  "를 초대합니다", "를 따라갑니다", "에게 인사합니다", "를 찍습니다",
                  "에게 전화합니다", "를 기다립니다"],
        "negated": ["를 만나지 않습니다", "를 방문하지 않습니다", "를 돕지 않습니다", "에게 감사하지 않습니다", "를 초대하지 않습니다", "를 따라가지 않습니다", "에게 인사하지 않습니다", "를 찍지 않습니다", "에게 전화하지 않습니다", "를 기다리지 않습니다"],
        "templates": ["{a}는 {time} {place} {b}{verb}.", "{time} {a}는 {place} {b}{verb}.",
                      "{place} {a}는 {time} {b}{verb}."],
    },
    "zh": {
        "names": ["小明", "王芳", "李华", "张伟", "刘洋", "陈静", "赵磊", "孙丽", "周杰", "吴敏"],
        "verbs": ["见到", "拜访", "帮助", "感谢", "邀请", "陪着", "问候", "等", "想念", "找"],
        "negated": ["没有见到", "没有拜访", "没有帮助", "没有感谢", "没有邀请", "没有陪着", "没有问候", "没有等", "没有想念", "没有找"],
        "templates": ["{a}{time}{place}{verb}{b}。", "{time}{a}{place}{verb}{b}。",
                      "{time}，{a}{place}{verb}{b}。"],
    },
}
