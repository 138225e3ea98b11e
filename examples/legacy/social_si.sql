-- The Nanhai social security bureau's legacy insurance system: the enrollment table a district
-- office keeps — short pinyin column names, codes, several insurance types in one column. The
-- demo runs it on MariaDB; examples/legacy/social_si_mssql.toml points the same source at SQL
-- Server. exhub reads its change log and never writes to it.
CREATE TABLE IF NOT EXISTS si_cbdj (
  cbdjh  VARCHAR(20)   NOT NULL COMMENT '参保登记号',
  sfzh   CHAR(18)      NOT NULL COMMENT '公民身份号码',
  xm     VARCHAR(50)   NOT NULL COMMENT '姓名',
  xb     CHAR(1)       NULL     COMMENT '性别代码: 1 男, 2 女',
  csrq   DATE          NULL     COMMENT '出生日期',
  dwdm   CHAR(18)      NOT NULL COMMENT '参保单位统一社会信用代码',
  dwmc   VARCHAR(200)  NULL     COMMENT '参保单位名称',
  xzlx   VARCHAR(30)   NOT NULL COMMENT '险种代码, 逗号分隔: 110 养老, 310 医疗, 210 失业, 410 工伤, 510 生育',
  jfjs   DECIMAL(12,2) NOT NULL COMMENT '缴费基数 (元/月)',
  cbrq   DATE          NOT NULL COMMENT '参保日期',
  zzrq   DATE          NULL     COMMENT '终止日期',
  cbzt   CHAR(1)       NOT NULL COMMENT '参保状态: 1 正常, 2 暂停, 3 终止',
  ssq    VARCHAR(50)   NULL     COMMENT '所属区',
  PRIMARY KEY (cbdjh)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COMMENT = '参保登记';
